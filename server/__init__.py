"""recbandit's gRPC transport: settings, converters, servicers, error map and life cycle.

Importing it limits numpy's BLAS to one thread unless the environment says otherwise: the
variables must be set before numpy loads, and ``server.settings`` loads it through the engine.
Retrieval is one matrix-vector product per request; threads of its own would only compete with
the RPC threads for the same cores.
"""

import os as _os

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_name, "1")
