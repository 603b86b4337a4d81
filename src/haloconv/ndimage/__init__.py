"""scipy.ndimage's correlations and linear filters, split across workers: change one import.

``from haloconv import ndimage as ndi``: ``ndi.correlate``, ``convolve``, ``correlate1d``,
``convolve1d`` (``correlations``) and the filters built on them, ``gaussian_filter(1d)``,
``uniform_filter(1d)``, ``sobel``, ``prewitt``, ``laplace``, ``gaussian_laplace``,
``gaussian_gradient_magnitude`` (``filters``), with scipy.ndimage's signatures, defaults
and semantics, and the keyword extras ``workers``, ``partition``, ``backend`` and ``engine``.  On
backend 'ndimage' (the default) each result is bit for bit scipy's on the whole input but
the uniform filters' (see ``filters``); where this differs from scipy is said in
``correlations``.  A dask array in gives a dask array out, lazily, chunk by chunk (``lazy``).
"""

from haloconv.ndimage.correlations import convolve, convolve1d, correlate, correlate1d
from haloconv.ndimage.filters import (
    gaussian_filter,
    gaussian_filter1d,
    gaussian_gradient_magnitude,
    gaussian_laplace,
    laplace,
    prewitt,
    sobel,
    uniform_filter,
    uniform_filter1d,
)

__all__ = ["convolve", "convolve1d", "correlate", "correlate1d", "gaussian_filter", "gaussian_filter1d",
           "gaussian_gradient_magnitude", "gaussian_laplace", "laplace", "prewitt", "sobel", "uniform_filter",
           "uniform_filter1d"]
