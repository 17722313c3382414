"""pacsd benchmarks: a DICOMweb load driver that verifies every answer.

``python -m benchmarks run --target URL`` measures one DICOMweb root (pacsd, Orthanc or any
other server) on a deterministic synthetic data set; ``python -m benchmarks side-by-side``
starts Orthanc and pacsd on loopback and runs the same phases on both; ``python -m
benchmarks compare A.json B.json`` prints ratios. Results go to ``benchmarks/out/``
(git-ignored); the side-by-side run also writes ``benchmarks/RESULTS.md``.

Modules: :mod:`.dataset` (seeded generator + manifest), :mod:`.client` (aiohttp driver,
streaming multipart parser, concurrency), :mod:`.verify` (answer checks), :mod:`.phases`
(the measured phases), :mod:`.servers` (start pacsd / Orthanc / the stub server),
:mod:`.profiling` (py-spy), :mod:`.report` (tables, JSON, RESULTS.md).
"""

__version__ = "0.1.0"
