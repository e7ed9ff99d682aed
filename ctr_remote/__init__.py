"""ctr-remote: convert container images to workload-optimized eStargz (a clone of upstream's
`ctr-remote image optimize`)."""

__version__ = "0.1.0"
