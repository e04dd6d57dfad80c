"""PyTorch checkpoints: certify's own format, the seed's, CTBench's, CTRAIN's, bare state dicts.

Loading a file (:func:`load_checkpoint`) goes through four steps, one module each:

1. :mod:`~model_zoo.checkpoint.reading`: ``torch.load(..., weights_only=True)`` and
   nothing else, so a file can never run code; a file that needs full unpickling is
   refused;
2. :mod:`~model_zoo.checkpoint.formats`: the format is recognised from the file's layout
   and one adapter per format turns it into the state dict of a bare registry
   architecture, plus the normalization the file stores;
3. :mod:`~model_zoo.checkpoint.fit`: the layout is checked against the architecture before
   anything is built, so errors name the offending keys and shapes; the data set and
   class count are inferred from tensor shapes when the file does not say them;
4. :mod:`~model_zoo.checkpoint.loading`: the architecture, geometry and normalization are
   resolved and the network is built, loaded with ``strict=True``, wrapped in its
   normalization and put in eval mode.

:func:`save_checkpoint` (:mod:`~model_zoo.checkpoint.saving`) writes certify's own format,
which records everything needed to load the file again without further arguments.
"""

from model_zoo.checkpoint.formats import (
    ADAPTERS,
    CTRAIN_NORMALIZATION,
    FORMAT_NAME,
    FORMAT_VERSION,
    clean_state_dict,
    detect_format,
)
from model_zoo.checkpoint.loading import load_checkpoint
from model_zoo.checkpoint.reading import read_checkpoint
from model_zoo.checkpoint.saving import save_checkpoint
from model_zoo.loaded import LoadedModel

__all__ = [
    "ADAPTERS",
    "CTRAIN_NORMALIZATION",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LoadedModel",
    "clean_state_dict",
    "detect_format",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
]
