// helmrec-hop: the router's gRPC data plane in native code.
//
// Why it exists: a ModelInfer hop through the Python router costs ~0.9 ms at
// P50 and ~500 us of CPU, almost all of it grpc.aio receiving and re-sending
// (docs/router.md). This process takes the hot path out of Python: it serves
// the public gRPC port, reads USER_ID (and the model name) from the request's
// wire bytes without a full parse, picks the backend with the same policies
// as router/policies.py (rendezvous homes: same seeds, same splitmix64, so it
// places every user where the Python router would), and forwards the client's
// bytes untouched through grpc++'s callback API on one channel per backend.
//
// Everything else stays in the Python router, which the hop forwards to on a
// loopback port: metadata, summed statistics, ModelStreamInfer, sticky
// sequences, admin refusals. The Python process also owns the control plane
// and drives this one over stdin/stdout:
//   stdin  "backend\t<slot>\t<target>\t<seed>\t<name>"  list or re-list a slot
//          "retire\t<slot>"                              no new requests there
//          "health\t<slot>\t<0|1>\t<queue depth>"        probe and scrape results
//          EOF                                           the router is gone: stop
//   stdout "ready\t<port>"                               serving
//          "down\t<slot>\t<reason>"                      a backend failed before answering
//          "stats\t<requests>\t<answered>\t<retries>\t<unavailable>\t<overloaded>"
//          "slot\t<slot>\t<in flight>\t<served>"         (after each stats line)

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using google::protobuf::io::CodedInputStream;
using google::protobuf::internal::WireFormatLite;
using grpc::ByteBuffer;
using grpc::Status;
using grpc::StatusCode;

const std::string kService = "/inference.GRPCInferenceService/";
const std::string kModelInfer = kService + "ModelInfer";
const std::string kStreamInfer = kService + "ModelStreamInfer";
// Slots are append-only (like the Python dispatcher's): an index held by a
// request in flight stays valid while the list changes.
constexpr int kMaxSlots = 4096;

struct Options {
  std::string listen = "127.0.0.1:0";
  std::string fallback;
  std::string policy = "helm";
  int max_in_flight = 64;
  double slack = 4;
  int replicas = 1;
  double request_timeout_s = 60;
  int max_request_bytes = 64 << 20;
  bool reuse_port = false;
  std::vector<std::string> exposed;
};

// ---- the control channel's output ----------------------------------------------------
std::mutex out_mutex;

void Emit(const std::string& line) {
  std::lock_guard<std::mutex> lock(out_mutex);
  std::fwrite(line.data(), 1, line.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

// ---- backends -------------------------------------------------------------------------
struct Backend {
  std::string name;
  uint64_t seed = 0;
  std::unique_ptr<grpc::GenericStub> stub;
  std::atomic<bool> healthy{false};
  std::atomic<bool> retired{false};
  std::atomic<double> queue{0};
  std::atomic<int64_t> in_flight{0};
  std::atomic<uint64_t> served{0};
};

std::shared_ptr<grpc::Channel> OpenChannel(const std::string& target) {
  // As router/grpc_front.py: answers uncapped, reconnect backoff capped at 2 s
  // so a revived backend is reachable within a few health probes.
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

struct Counters {
  std::atomic<uint64_t> requests{0}, answered{0}, retries{0}, unavailable{0}, overloaded{0};
};

// splitmix64 of (user, backend seed): router/rendezvous.py's weight.
uint64_t Weight(uint64_t user, uint64_t seed) {
  uint64_t z = (user ^ seed) + 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

struct Refusal {
  StatusCode code;
  std::string message;
};

class Table {
 public:
  explicit Table(const Options& options) : options_(options) {}

  int size() const { return count_.load(std::memory_order_acquire); }
  Backend& at(int slot) { return *slots_[slot]; }

  // A new slot (appended) or a listed one again; only the control thread calls this.
  void List(int slot, const std::string& target, uint64_t seed, const std::string& name) {
    if (slot < size()) {
      slots_[slot]->retired.store(false);
      return;
    }
    if (slot != size() || slot >= kMaxSlots) {
      std::cerr << "helmrec-hop: backend slot " << slot << " out of order (have " << size() << ")" << std::endl;
      return;
    }
    auto backend = std::make_unique<Backend>();
    backend->name = name;
    backend->seed = seed;
    backend->stub = std::make_unique<grpc::GenericStub>(OpenChannel(target));
    slots_[slot] = std::move(backend);
    count_.store(slot + 1, std::memory_order_release);
  }

  // router/policies.py's choice for a request of `user` (none: least loaded).
  // The checks read counters other threads move, so two requests racing for a
  // backend's last free place can both get it: the limit is kept to within
  // the number of server threads.
  std::optional<int> Choose(std::optional<uint64_t> user, Refusal* refusal) {
    const int n = size();
    std::vector<int> room;
    room.reserve(n);
    int healthy = 0;
    for (int i = 0; i < n; ++i) {
      Backend& b = *slots_[i];
      if (!b.healthy.load(std::memory_order_relaxed) || b.retired.load(std::memory_order_relaxed)) continue;
      ++healthy;
      if (b.in_flight.load(std::memory_order_relaxed) < options_.max_in_flight) room.push_back(i);
    }
    if (room.empty()) {
      if (healthy == 0) {
        *refusal = {StatusCode::UNAVAILABLE, "no healthy backend (all " + std::to_string(n) + " are down)"};
      } else {
        *refusal = {StatusCode::RESOURCE_EXHAUSTED,
                    "router overloaded: all " + std::to_string(healthy) + " healthy backends have " +
                        std::to_string(options_.max_in_flight) + " requests in flight (the per-backend limit)"};
      }
      return std::nullopt;
    }
    const std::string& policy = options_.policy;
    if (policy == "round_robin") return Rotated(room, n).front();
    if (!user.has_value() || policy == "least_loaded") {
      return Best(Rotated(room, n), [this](int i) { return -Load(i); });
    }
    if (policy == "kv_aware") return Home(*user, room, [](int) { return true; });
    // helm: the home unless it runs more than `slack` ahead of the least loaded.
    double lightest = GuardLoad(room.front());
    for (int i : room) lightest = std::min(lightest, GuardLoad(i));
    const double ceiling = lightest + options_.slack;
    return Home(*user, room, [this, ceiling](int i) { return GuardLoad(i) <= ceiling; });
  }

 private:
  double Load(int i) {
    return std::max(static_cast<double>(slots_[i]->in_flight.load(std::memory_order_relaxed)),
                    slots_[i]->queue.load(std::memory_order_relaxed));
  }

  // LoadGuard.load: in-flight times the replicas sharing the traffic, or the backend's queue.
  double GuardLoad(int i) {
    return std::max(static_cast<double>(slots_[i]->in_flight.load(std::memory_order_relaxed) * options_.replicas),
                    slots_[i]->queue.load(std::memory_order_relaxed));
  }

  // The first backend of the user's rendezvous order that may take it: the
  // highest weight among those that pass.
  template <class Pass>
  int Home(uint64_t user, const std::vector<int>& room, Pass pass) {
    int best = -1;
    uint64_t best_weight = 0;
    for (int i : room) {
      if (!pass(i)) continue;
      const uint64_t w = Weight(user, slots_[i]->seed);
      if (best < 0 || w > best_weight) best = i, best_weight = w;
    }
    return best;
  }

  // `room` (ascending) starting at this call's cursor, wrapping around: equal
  // scores rotate, as in router/policies.py.
  std::vector<int> Rotated(const std::vector<int>& room, int n) {
    const int start = static_cast<int>(cursor_.fetch_add(1, std::memory_order_relaxed) % n);
    auto k = std::lower_bound(room.begin(), room.end(), start);
    std::vector<int> out(k, room.end());
    out.insert(out.end(), room.begin(), k);
    return out;
  }

  template <class Score>
  int Best(const std::vector<int>& order, Score score) {
    int best = order.front();
    for (int i : order) {
      if (score(i) > score(best)) best = i;
    }
    return best;
  }

  const Options& options_;
  std::array<std::unique_ptr<Backend>, kMaxSlots> slots_;
  std::atomic<int> count_{0};
  std::atomic<uint64_t> cursor_{0};
};

// ---- what routing reads from a ModelInferRequest's wire bytes -------------------------
struct Features {
  std::string model;
  std::optional<uint64_t> user;
  bool sequence = false;
};

struct Input {
  std::string name, datatype;
  uint64_t count = 0;  // elements in `contents` (typed, not raw)
  uint64_t first = 0;
};

bool ReadString(CodedInputStream* in, std::string* out) { return WireFormatLite::ReadString(in, out); }

// One repeated integer field of InferTensorContents, packed or not: count its
// elements and keep the first (sign-extended to 64 bits for the signed types).
bool ReadInts(CodedInputStream* in, uint32_t tag, bool is_signed32, Input* input) {
  auto take = [&](uint64_t v) {
    if (input->count++ == 0) {
      input->first = is_signed32 ? static_cast<uint64_t>(static_cast<int64_t>(static_cast<int32_t>(v))) : v;
    }
  };
  uint64_t v;
  if (WireFormatLite::GetTagWireType(tag) == WireFormatLite::WIRETYPE_VARINT) {
    if (!in->ReadVarint64(&v)) return false;
    take(v);
    return true;
  }
  uint32_t length;
  if (!in->ReadVarint32(&length)) return false;
  auto limit = in->PushLimit(static_cast<int>(length));
  while (in->BytesUntilLimit() > 0) {
    if (!in->ReadVarint64(&v)) return false;
    take(v);
  }
  in->PopLimit(limit);
  return true;
}

bool ReadContents(CodedInputStream* in, Input* input) {
  uint32_t tag;
  while ((tag = in->ReadTag()) != 0) {
    const int field = WireFormatLite::GetTagFieldNumber(tag);
    // int_contents (2), int64_contents (3), uint_contents (4), uint64_contents (5)
    if (field >= 2 && field <= 5) {
      if (!ReadInts(in, tag, field == 2, input)) return false;
    } else if (!WireFormatLite::SkipField(in, tag)) {
      return false;
    }
  }
  return true;
}

template <class Body>
bool ReadMessage(CodedInputStream* in, Body body) {
  uint32_t length;
  if (!in->ReadVarint32(&length)) return false;
  auto limit = in->PushLimit(static_cast<int>(length));
  const bool ok = body() && in->ConsumedEntireMessage();
  in->PopLimit(limit);
  return ok;
}

bool ReadInput(CodedInputStream* in, Input* input) {
  return ReadMessage(in, [&] {
    uint32_t tag;
    while ((tag = in->ReadTag()) != 0) {
      const int field = WireFormatLite::GetTagFieldNumber(tag);
      bool ok;
      if (field == 1) ok = ReadString(in, &input->name);
      else if (field == 2) ok = ReadString(in, &input->datatype);
      else if (field == 5) ok = ReadMessage(in, [&] { return ReadContents(in, input); });
      else ok = WireFormatLite::SkipField(in, tag);
      if (!ok) return false;
    }
    return true;
  });
}

// One entry of the `parameters` map: does it make the request part of a sequence?
bool ReadParameter(CodedInputStream* in, Features* features) {
  std::string key;
  int64_t int_value = 0;
  std::string string_value;
  bool is_string = false;
  const bool ok = ReadMessage(in, [&] {
    uint32_t tag;
    while ((tag = in->ReadTag()) != 0) {
      bool ok;
      if (WireFormatLite::GetTagFieldNumber(tag) == 1) {
        ok = ReadString(in, &key);
      } else if (WireFormatLite::GetTagFieldNumber(tag) == 2) {
        ok = ReadMessage(in, [&] {
          uint32_t t;
          while ((t = in->ReadTag()) != 0) {
            bool ok2;
            uint64_t v;
            if (WireFormatLite::GetTagFieldNumber(t) == 2) {
              ok2 = in->ReadVarint64(&v);
              int_value = static_cast<int64_t>(v), is_string = false;
            } else if (WireFormatLite::GetTagFieldNumber(t) == 3) {
              ok2 = ReadString(in, &string_value);
              is_string = true;
            } else {
              ok2 = WireFormatLite::SkipField(in, t);
            }
            if (!ok2) return false;
          }
          return true;
        });
      } else {
        ok = WireFormatLite::SkipField(in, tag);
      }
      if (!ok) return false;
    }
    return true;
  });
  // As request_features._grpc_sequence: a zero or empty sequence id is none.
  if (ok && key == "sequence_id" && (is_string ? !string_value.empty() : int_value != 0)) features->sequence = true;
  return ok;
}

// The USER_ID value as request_features.from_grpc reads it: an integer tensor
// of exactly one element, from raw_input_contents when the request has any.
std::optional<uint64_t> UserId(const std::vector<Input>& inputs, const std::vector<std::string>& raws,
                               size_t raw_count) {
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (inputs[i].name != "USER_ID") continue;
    const std::string& dtype = inputs[i].datatype;
    int size;
    bool is_signed;
    if (dtype == "INT64") size = 8, is_signed = true;
    else if (dtype == "INT32") size = 4, is_signed = true;
    else if (dtype == "UINT64") size = 8, is_signed = false;
    else if (dtype == "UINT32") size = 4, is_signed = false;
    else return std::nullopt;
    if (raw_count == 0) {
      if (inputs[i].count != 1) return std::nullopt;
      return inputs[i].first;
    }
    if (i >= raws.size() || static_cast<int>(raws[i].size()) != size) return std::nullopt;
    uint64_t v = 0;
    std::memcpy(&v, raws[i].data(), size);  // little-endian hosts only (x86-64, aarch64)
    if (size == 4) v = is_signed ? static_cast<uint64_t>(static_cast<int64_t>(static_cast<int32_t>(v))) : v;
    return v;
  }
  return std::nullopt;
}

// Scan a ModelInferRequest: model_name (1), parameters (4), inputs (5),
// raw_input_contents (7); everything else is skipped without being copied.
bool ReadFeatures(ByteBuffer* buffer, Features* features) {
  grpc::ProtoBufferReader reader(buffer);
  if (!reader.status().ok()) return false;
  CodedInputStream in(&reader);
  std::vector<Input> inputs;
  std::vector<std::string> raws;  // only the small ones are kept: USER_ID is one element
  size_t raw_count = 0;
  uint32_t tag;
  while ((tag = in.ReadTag()) != 0) {
    const int field = WireFormatLite::GetTagFieldNumber(tag);
    bool ok;
    if (field == 1) {
      ok = ReadString(&in, &features->model);
    } else if (field == 4) {
      ok = ReadParameter(&in, features);
    } else if (field == 5) {
      inputs.emplace_back();
      ok = ReadInput(&in, &inputs.back());
    } else if (field == 7) {
      uint32_t length;
      ok = in.ReadVarint32(&length);
      ++raw_count;
      if (ok && length <= 8) {
        raws.emplace_back();
        ok = in.ReadString(&raws.back(), static_cast<int>(length));
      } else if (ok) {
        raws.emplace_back();
        ok = in.Skip(static_cast<int>(length));
      }
    } else {
      ok = WireFormatLite::SkipField(&in, tag);
    }
    if (!ok) return false;
  }
  if (!in.ConsumedEntireMessage()) return false;
  features->user = UserId(inputs, raws, raw_count);
  return true;
}

// ---- the server ----------------------------------------------------------------------
// Transport headers the hop's own channel sets; the client's copies are not forwarded.
bool IsHopHeader(const std::string& key) {
  return key.empty() || key[0] == ':' || key.rfind("grpc-", 0) == 0 || key == "user-agent" ||
         key == "content-type" || key == "te" || key == "host" || key == "accept-encoding";
}

class Hop;

// One unary call: ModelInfer placed by the policy, or any other method passed
// to the Python router. Deletes itself when gRPC is done with it.
class UnaryCall final : public grpc::ServerGenericBidiReactor {
 public:
  UnaryCall(Hop* hop, grpc::GenericCallbackServerContext* context, bool infer)
      : hop_(hop), context_(context), infer_(infer) {
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool) override {}
  void OnCancel() override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (upstream_) upstream_->TryCancel();
  }
  void OnDone() override { delete this; }

 private:
  void Route();
  void Send(int slot);
  void Forward(const std::string& method);
  grpc::ClientContext* NewUpstream();
  void Answered(int slot, Status status);
  void Refuse(const Refusal& refusal);

  Hop* hop_;
  grpc::GenericCallbackServerContext* context_;
  bool infer_;
  bool retried_ = false;
  ByteBuffer request_, response_;
  std::mutex mutex_;
  std::unique_ptr<grpc::ClientContext> upstream_;
  std::optional<uint64_t> user_;
};

class StreamBridge;

class Hop final : public grpc::CallbackGenericService {
 public:
  explicit Hop(Options options) : options_(std::move(options)), table_(options_) {
    fallback_ = std::make_unique<grpc::GenericStub>(OpenChannel(options_.fallback));
  }

  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* context) override;

  const Options& options() const { return options_; }
  Table& table() { return table_; }
  Counters& counters() { return counters_; }
  grpc::GenericStub& fallback() { return *fallback_; }

  bool Exposed(const std::string& model) const {
    return std::find(options_.exposed.begin(), options_.exposed.end(), model) != options_.exposed.end();
  }

  std::string NotExposed(const std::string& model) const {
    std::string list;
    for (const auto& m : options_.exposed) list += (list.empty() ? "" : ", ") + m;
    return "model '" + model + "' is not served through the router (exposed: " + list +
           "; --expose-model NAME makes another reachable)";
  }

  // A client context for one forwarded call: the client's deadline (or the
  // router's), its metadata less the transport's own headers.
  std::unique_ptr<grpc::ClientContext> Upstream(grpc::GenericCallbackServerContext* context) const {
    auto upstream = std::make_unique<grpc::ClientContext>();
    const auto deadline = context->deadline();
    const auto fallback = std::chrono::system_clock::now() +
                          std::chrono::microseconds(static_cast<int64_t>(options_.request_timeout_s * 1e6));
    upstream->set_deadline(deadline == std::chrono::system_clock::time_point::max() ? fallback : deadline);
    for (const auto& [key, value] : context->client_metadata()) {
      std::string k(key.data(), key.size());
      if (!IsHopHeader(k)) upstream->AddMetadata(k, std::string(value.data(), value.size()));
    }
    return upstream;
  }

  void MarkDown(int slot, const std::string& reason) {
    table_.at(slot).healthy.store(false);
    std::string clean = reason;
    std::replace(clean.begin(), clean.end(), '\n', ' ');
    std::replace(clean.begin(), clean.end(), '\t', ' ');
    Emit("down\t" + std::to_string(slot) + "\t" + clean);
  }

 private:
  Options options_;
  Table table_;
  Counters counters_;
  std::unique_ptr<grpc::GenericStub> fallback_;
};

void UnaryCall::OnReadDone(bool ok) {
  if (!ok) {
    Finish(Status(StatusCode::INVALID_ARGUMENT, "no request message arrived"));
    return;
  }
  if (!infer_) return Forward(context_->method());
  Route();
}

void UnaryCall::Route() {
  Features features;
  if (!ReadFeatures(&request_, &features)) {
    Finish(Status(StatusCode::INVALID_ARGUMENT, "ModelInferRequest: the message (" +
                                                    std::to_string(request_.Length()) +
                                                    " bytes) cannot be decoded"));
    return;
  }
  if (!hop_->Exposed(features.model)) {
    Finish(Status(StatusCode::NOT_FOUND, hop_->NotExposed(features.model)));
    return;
  }
  if (features.sequence) return Forward(kModelInfer);  // the Python router keeps the sticky-sequence table
  hop_->counters().requests.fetch_add(1, std::memory_order_relaxed);
  user_ = features.user;
  Refusal refusal;
  auto slot = hop_->table().Choose(user_, &refusal);
  if (!slot) return Refuse(refusal);
  Send(*slot);
}

void UnaryCall::Send(int slot) {
  Backend& backend = hop_->table().at(slot);
  backend.in_flight.fetch_add(1, std::memory_order_relaxed);
  backend.served.fetch_add(1, std::memory_order_relaxed);
  backend.stub->UnaryCall(NewUpstream(), kModelInfer, {}, &request_, &response_,
                          [this, slot](Status status) { Answered(slot, std::move(status)); });
}

void UnaryCall::Forward(const std::string& method) {
  hop_->fallback().UnaryCall(NewUpstream(), method, {}, &request_, &response_,
                             [this](Status status) { Answered(-1, std::move(status)); });
}

// The lock only guards the pointer against OnCancel: it is released before the
// call starts, since grpc++ may run the call's callback inline.
grpc::ClientContext* UnaryCall::NewUpstream() {
  std::lock_guard<std::mutex> lock(mutex_);
  upstream_ = hop_->Upstream(context_);
  return upstream_.get();
}

void UnaryCall::Refuse(const Refusal& refusal) {
  auto& counters = hop_->counters();
  (refusal.code == StatusCode::UNAVAILABLE ? counters.unavailable : counters.overloaded)
      .fetch_add(1, std::memory_order_relaxed);
  Finish(Status(refusal.code, refusal.message));
}

void UnaryCall::Answered(int slot, Status status) {
  if (slot >= 0) {
    Backend& backend = hop_->table().at(slot);
    backend.in_flight.fetch_sub(1, std::memory_order_relaxed);
    // UNAVAILABLE is what gRPC reports for a refused, reset or closed
    // connection: the backend did not answer, so the request may go once
    // more elsewhere (router/dispatch.py).
    if (status.error_code() == StatusCode::UNAVAILABLE && !context_->IsCancelled()) {
      const std::string reason = "UNAVAILABLE: " + status.error_message();
      hop_->MarkDown(slot, reason);
      if (!retried_) {
        retried_ = true;
        hop_->counters().retries.fetch_add(1, std::memory_order_relaxed);
        Refusal refusal;
        auto next = hop_->table().Choose(user_, &refusal);
        if (!next) return Refuse(refusal);
        return Send(*next);
      }
      hop_->counters().unavailable.fetch_add(1, std::memory_order_relaxed);
      Finish(Status(StatusCode::UNAVAILABLE, "backend " + backend.name + " failed before answering (" + reason +
                                                 "); and the retry's backend failed too"));
      return;
    }
    hop_->counters().answered.fetch_add(1, std::memory_order_relaxed);
  }
  if (status.ok()) {
    StartWriteAndFinish(&response_, grpc::WriteOptions(), Status::OK);
  } else {
    Finish(status);  // the backend's own error, its code and text relayed
  }
}

// ModelStreamInfer, relayed both ways to the Python router (which routes each
// message on its own): one message in flight per direction, so neither side
// buffers more than one message.
class StreamBridge final : public grpc::ServerGenericBidiReactor {
 public:
  StreamBridge(Hop* hop, grpc::GenericCallbackServerContext* context)
      : upstream_context_(hop->Upstream(context)), up_(this) {
    hop->fallback().PrepareBidiStreamingCall(upstream_context_.get(), kStreamInfer, {}, &up_);
    up_.StartRead(&from_up_);
    up_.StartCall();
    StartRead(&from_client_);
  }

  void OnReadDone(bool ok) override {
    if (ok) {
      up_.StartWrite(&from_client_);
    } else {
      up_.StartWritesDone();
    }
  }
  void OnWriteDone(bool ok) override {
    std::optional<Status> finish;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      writing_ = false;
      finish.swap(pending_finish_);
    }
    if (finish) return Finish(*finish);
    if (ok) {
      up_.StartRead(&from_up_);
    } else {
      upstream_context_->TryCancel();
    }
  }
  void OnCancel() override { upstream_context_->TryCancel(); }
  void OnDone() override { Release(); }

 private:
  class Upstream final : public grpc::ClientBidiReactor<ByteBuffer, ByteBuffer> {
   public:
    explicit Upstream(StreamBridge* bridge) : bridge_(bridge) {}
    void OnReadDone(bool ok) override { bridge_->UpstreamRead(ok); }
    void OnWriteDone(bool ok) override { bridge_->UpstreamWritten(ok); }
    void OnDone(const Status& status) override { bridge_->UpstreamDone(status); }

   private:
    StreamBridge* bridge_;
  };

  void UpstreamRead(bool ok) {
    if (!ok) return;  // the stream's status follows in UpstreamDone
    {
      std::lock_guard<std::mutex> lock(mutex_);
      writing_ = true;
    }
    StartWrite(&from_up_);
  }
  void UpstreamWritten(bool ok) {
    if (ok) StartRead(&from_client_);
  }
  void UpstreamDone(const Status& status) {
    bool now;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      now = !writing_;
      if (!now) pending_finish_ = status;  // finish once the last answer is written
    }
    if (now) Finish(status);
    Release();
  }
  // Both the server call and the upstream call must be done before the memory goes.
  void Release() {
    if (done_.fetch_add(1) == 1) delete this;
  }

  std::unique_ptr<grpc::ClientContext> upstream_context_;
  Upstream up_;
  ByteBuffer from_client_, from_up_;
  std::mutex mutex_;
  bool writing_ = false;
  std::optional<Status> pending_finish_;
  std::atomic<int> done_{0};
};

grpc::ServerGenericBidiReactor* Hop::CreateReactor(grpc::GenericCallbackServerContext* context) {
  if (context->method() == kStreamInfer) return new StreamBridge(this, context);
  return new UnaryCall(this, context, context->method() == kModelInfer);
}

// ---- control ------------------------------------------------------------------------
std::vector<std::string> Split(const std::string& line) {
  std::vector<std::string> parts;
  std::stringstream stream(line);
  std::string part;
  while (std::getline(stream, part, '\t')) parts.push_back(part);
  return parts;
}

void ReadControl(Hop* hop, grpc::Server* server) {
  std::string line;
  while (std::getline(std::cin, line)) {
    const auto parts = Split(line);
    try {
      if (parts.size() == 5 && parts[0] == "backend") {
        hop->table().List(std::stoi(parts[1]), parts[2], std::stoull(parts[3]), parts[4]);
      } else if (parts.size() == 2 && parts[0] == "retire" && std::stoi(parts[1]) < hop->table().size()) {
        hop->table().at(std::stoi(parts[1])).retired.store(true);
      } else if (parts.size() == 4 && parts[0] == "health" && std::stoi(parts[1]) < hop->table().size()) {
        Backend& backend = hop->table().at(std::stoi(parts[1]));
        backend.queue.store(std::stod(parts[3]));
        backend.healthy.store(parts[2] == "1");
      } else {
        std::cerr << "helmrec-hop: unknown control line: " << line << std::endl;
      }
    } catch (const std::exception& exc) {
      std::cerr << "helmrec-hop: bad control line (" << exc.what() << "): " << line << std::endl;
    }
  }
  // stdin closed: the router that started this hop is gone.
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
}

void ReportStats(Hop* hop, const std::atomic<bool>* stopping) {
  while (!stopping->load()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    Counters& c = hop->counters();
    std::string report = "stats\t" + std::to_string(c.requests.load()) + "\t" + std::to_string(c.answered.load()) +
                         "\t" + std::to_string(c.retries.load()) + "\t" + std::to_string(c.unavailable.load()) + "\t" +
                         std::to_string(c.overloaded.load());
    for (int i = 0; i < hop->table().size(); ++i) {
      Backend& b = hop->table().at(i);
      report += "\nslot\t" + std::to_string(i) + "\t" + std::to_string(b.in_flight.load()) + "\t" +
                std::to_string(b.served.load());
    }
    Emit(report);
  }
}

[[noreturn]] void Usage(const std::string& error) {
  std::cerr << "helmrec-hop: " << error << "\n"
            << "usage: helmrec-hop --listen HOST:PORT --fallback HOST:PORT [--policy helm|kv_aware|least_loaded|"
               "round_robin] [--max-in-flight N] [--slack N] [--replicas N] [--request-timeout-s S] "
               "[--max-request-bytes N] [--reuse-port] --expose-model NAME...\n"
               "(normally started by `helmrec route --data-plane native`, which feeds it backends on stdin)"
            << std::endl;
  std::exit(2);
}

Options ParseArgs(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--reuse-port") {
      options.reuse_port = true;
      continue;
    }
    std::string value;
    const auto eq = flag.find('=');
    if (eq != std::string::npos) {  // --flag=value
      value = flag.substr(eq + 1);
      flag = flag.substr(0, eq);
    } else if (i + 1 < argc) {  // --flag value
      value = argv[++i];
    } else {
      Usage(flag + " needs a value");
    }
    try {
      if (flag == "--listen") options.listen = value;
      else if (flag == "--fallback") options.fallback = value;
      else if (flag == "--policy") options.policy = value;
      else if (flag == "--max-in-flight") options.max_in_flight = std::stoi(value);
      else if (flag == "--slack") options.slack = std::stod(value);
      else if (flag == "--replicas") options.replicas = std::stoi(value);
      else if (flag == "--request-timeout-s") options.request_timeout_s = std::stod(value);
      else if (flag == "--max-request-bytes") options.max_request_bytes = std::stoi(value);
      else if (flag == "--expose-model") options.exposed.push_back(value);
      else Usage("unknown flag " + flag);
    } catch (const std::exception&) {
      Usage(flag + " " + value + ": not a number");
    }
  }
  const std::vector<std::string> policies = {"helm", "kv_aware", "least_loaded", "round_robin"};
  if (std::find(policies.begin(), policies.end(), options.policy) == policies.end()) {
    Usage("--policy " + options.policy + ": the native hop runs helm, kv_aware, least_loaded or round_robin "
          "(emb_aware needs the Python data plane's EMB sketch)");
  }
  if (options.fallback.empty()) Usage("--fallback is required (the Python router's loopback gRPC address)");
  if (options.exposed.empty()) Usage("at least one --expose-model is required");
  if (options.max_in_flight < 1 || options.replicas < 1 || options.slack < 0 || options.request_timeout_s <= 0 ||
      options.max_request_bytes < 1) {
    Usage("--max-in-flight, --replicas, --max-request-bytes must be >= 1, --slack >= 0, --request-timeout-s > 0");
  }
  return options;
}

}  // namespace

int main(int argc, char** argv) {
  Hop hop(ParseArgs(argc, argv));
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(hop.options().listen, grpc::InsecureServerCredentials(), &port);
  // A message longer than this is refused with RESOURCE_EXHAUSTED from its
  // length prefix, before its bytes are gathered (as the Python router).
  builder.SetMaxReceiveMessageSize(hop.options().max_request_bytes);
  builder.SetMaxSendMessageSize(-1);
  // grpc++ shares a port by default on Linux; a second router on the same
  // port must fail instead, unless asked for.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, hop.options().reuse_port ? 1 : 0);
  builder.RegisterCallbackGenericService(&hop);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    std::cerr << "helmrec-hop: cannot listen on " << hop.options().listen << " (in use?)" << std::endl;
    return 1;
  }
  Emit("ready\t" + std::to_string(port));
  std::atomic<bool> stopping{false};
  std::thread control(ReadControl, &hop, server.get());
  std::thread stats(ReportStats, &hop, &stopping);
  server->Wait();
  stopping.store(true);
  control.join();
  stats.join();
  return 0;
}
