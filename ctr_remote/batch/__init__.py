"""`ctr-remote batch`: many optimize/convert jobs from one file, converted layers shared between
them (`cache`), across runs (`--cache-dir`) and across machines (`--cache-ref`, `remote`), and a
stable share of the jobs per shard (`shard`)."""
