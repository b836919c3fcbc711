"""The harness database: one LayerEntry per registered layer (tests/test_layers.py runs every check on each)."""

from tests.entries.act import ENTRIES as ACT_ENTRIES
from tests.entries.norm import ENTRIES as NORM_ENTRIES

ENTRIES = {entry.name: entry for entry in (*NORM_ENTRIES, *ACT_ENTRIES)}
