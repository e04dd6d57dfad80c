"""certify: certified robustness of image classifiers.

The package is split by job: ``certify`` holds the evaluation library and the CLI,
``model_zoo`` the architectures and model loading, ``training`` certified training and
``reports`` the writers of tables and CSV files. Importing ``certify`` is cheap and
changes no global settings; the heavy modules are imported where they are used.
"""

__version__ = "0.1.0"
