"""gill: a rebuild of GILL (Koh, Fried, Salakhutdinov, NeurIPS 2023) as a model library.

Pure torch/transformers/diffusers; orchestration lives in ``flows/``. Importing ``gill`` changes nothing in the
host process: gill loads every backbone from a local folder it resolved itself (``local_files_only`` unless
downloads are allowed), and only the front ends (the ``gill`` command, the flows) set offline-friendly Hugging Face
defaults for their own process (:func:`gill.offline.configure_environment`).
"""

__version__ = "0.1.0"
