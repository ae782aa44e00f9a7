"""sciinr: compress time-varying scientific fields with implicit neural representations.

Public surface::

    blob = sciinr.compress(array_or_path, psnr=40)      # -> bytes (or a file with out=)
    field = sciinr.decompress(blob)                    # -> numpy array
    arr = sciinr.open("field.sinr"); arr[3]            # lazy, decodes only what is indexed
    sciinr.info("field.sinr")                          # header, sizes, PSNR
    sciinr.compress_dataset("in.nc", variables="all", out="ds.sinr")   # several variables
    sciinr.to_sinr(xarray_dataset, "ds.sinr", psnr=40)  # xr.open_dataset("ds.sinr") reads it

Every error raised on purpose derives from :class:`SciinrError`.
"""

from ._version import __version__
from .api import Report, SinrArray, compress, decompress, info, open
from .config import (
    BoundConfig,
    ClusterConfig,
    Config,
    FitConfig,
    PartitionConfig,
    ScaleConfig,
    ShrinkConfig,
)
from .datafile import compress_dataset, decompress_dataset, open_dataset_file, to_sinr
from .errors import ConfigError, FormatError, InputError, OutputError, SciinrError

__all__ = [
    "BoundConfig",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "FitConfig",
    "FormatError",
    "InputError",
    "OutputError",
    "PartitionConfig",
    "Report",
    "ScaleConfig",
    "SciinrError",
    "ShrinkConfig",
    "SinrArray",
    "__version__",
    "compress",
    "compress_dataset",
    "decompress",
    "decompress_dataset",
    "info",
    "open",
    "open_dataset_file",
    "to_sinr",
]
