"""Dedup by ``(tenant_id, message_id)``: keep one copy, count the rest.

Which copy survives must not depend on arrival order or on the worker, or reruns would write
different lake rows: the earliest ``received_at`` wins, then the smallest payload source ref, then
the smallest properties text.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.rows import SOURCE_REF

SURVIVOR_ORDER = ("received_at", SOURCE_REF, "properties")
"""Among copies of one message, the first in this order survives (a missing text sorts as "")."""


def group_starts(sorted_keys: list[pa.ChunkedArray | pa.Array]) -> pa.Array:
    """True where a row's key (the tuple of ``sorted_keys`` columns) differs from the row before."""
    n = len(sorted_keys[0])
    if n == 0:
        return pa.array([], pa.bool_())
    changed = None
    for column in sorted_keys:
        differs = pc.not_equal(column[1:], column[:-1])
        changed = differs if changed is None else pc.or_(changed, differs)
    return pa.concat_arrays([pa.array([True]), pa.chunked_array(changed).combine_chunks()])


def dedupe_table(table: pa.Table) -> tuple[pa.Table, list[tuple[str, str]]]:
    """(one row per (tenant_id, message_id), (tenant_id, message_id) of every dropped copy).

    Only rows whose key occurs more than once are sorted to pick the survivor; the others keep
    their order and are not copied when there is no duplicate at all.
    """
    if not table.num_rows:
        return table, []
    keys = pc.binary_join_element_wise(table["tenant_id"], table["message_id"], "\x1f")
    encoded = pc.dictionary_encode(keys).combine_chunks()
    indices = encoded.indices.to_numpy(zero_copy_only=False)
    repeated = np.bincount(indices, minlength=len(encoded.dictionary))[indices] > 1
    if not repeated.any():
        return table, []
    copies = table.filter(pa.array(repeated))
    order_keys = pa.table(
        {
            "tenant_id": copies["tenant_id"],
            "message_id": copies["message_id"],
            **{
                name: copies[name] if name == "received_at" else pc.fill_null(copies[name], "")
                for name in SURVIVOR_ORDER
            },
        }
    )
    ordered = copies.take(
        pc.sort_indices(order_keys, sort_keys=[(name, "ascending") for name in order_keys.column_names])
    )
    first = group_starts([ordered["tenant_id"], ordered["message_id"]])
    dropped = ordered.filter(pc.invert(first))
    duplicates = list(zip(dropped["tenant_id"].to_pylist(), dropped["message_id"].to_pylist(), strict=True))
    unique = pa.concat_tables([table.filter(pa.array(~repeated)), ordered.filter(first)])
    return unique, duplicates
