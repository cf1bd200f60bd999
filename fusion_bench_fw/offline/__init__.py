"""Builders of local models and data (no hub): the tiny test pool and the mini benchmark."""

# Environment for a `fusion_bench` subprocess that must never reach a hub: everything it
# needs is local (used by the tests and the benchmark scripts).
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HYDRA_FULL_ERROR": "1",
}
