"""The HSTU generative-recommender network (config, model, weights, training, export)."""
