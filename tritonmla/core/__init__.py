"""Machinery below every operation: where kernels run (runtime), bound launches (launch), per-stream workspaces,
the configuration caches' helpers (config_cache), shared constants, the Hopper kernel choice's shared part
(hopper), shared Gluon helpers and the FP8 cache layouts."""
