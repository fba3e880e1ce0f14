"""gill: a rebuild of GILL (Koh, Fried, Salakhutdinov, NeurIPS 2023) as a model library.

Pure torch/transformers/diffusers; orchestration lives in ``flows/``. Importing ``gill`` sets
offline-friendly Hugging Face defaults (see :func:`gill.hub.configure_environment`).
"""

from gill.hub import configure_environment

configure_environment()

__version__ = "0.1.0"
