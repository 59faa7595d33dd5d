"""The shared HBM pool: EMB cache and KV cache in one allocation, split by alpha."""
