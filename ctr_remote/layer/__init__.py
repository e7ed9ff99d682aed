"""What a layer is, for every package that reads one: its compression (`compression.py`: sniffed
from magic bytes, streamed with bounded memory), its tar entries read safely (`archive.py`), and the
names in it (`paths.py`: one cleaning of entry names, the whiteout and opaque markers)."""
