"""The human-readable form of an `image check` report: one table per manifest."""

from __future__ import annotations

from ctr_remote.check import CheckReport, LayerReport

_COLUMNS = ("#", "LAYER", "SIZE", "FORMAT", "TOC DIGEST", "DIFF ID", "CHUNKS", "LANDMARK", "PREFETCH",
            "STATUS")  # fmt: skip


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else "ok" if ok else "MISMATCH"


def _row(layer: LayerReport) -> tuple[str, ...]:
    blob = layer.blob
    toc_ok = None
    if blob.toc_digest and layer.toc_digest_annotation:
        toc_ok = blob.toc_digest == layer.toc_digest_annotation
    diff_ok = None
    if blob.diff_id and layer.config_diff_id:
        diff_ok = blob.diff_id == layer.config_diff_id
    toc = "no annotation" if layer.is_estargz and not layer.toc_digest_annotation else _verdict(toc_ok)
    if layer.problems:
        status = "FAIL"
    elif not layer.is_estargz:
        status = "not eStargz"
    else:
        status = "ok" if not layer.warnings else "warning"
    return (
        str(layer.index),
        layer.digest.split(":", 1)[1][:12],
        human_size(layer.size),
        blob.format,
        toc,
        _verdict(diff_ok),
        "-" if blob.chunks is None else str(blob.chunks),
        blob.landmark or "-",
        human_size(blob.prefetch_bytes),
        status,
    )


def render(report: CheckReport, list_prioritized: bool) -> str:
    out: list[str] = [f"{report.reference} ({report.digest})"]
    for m in report.manifests:
        out.append("")
        out.append(f"manifest {m.digest} ({m.platform})")
        rows = [_COLUMNS, *(_row(layer) for layer in m.layers)]
        widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
        for row, layer in zip(rows, [None, *m.layers], strict=True):
            out.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
            if layer is None:
                continue
            out.extend(f"      {note}" for note in [*layer.problems, *layer.warnings])
            if list_prioritized and layer.blob.landmark == "prefetch":
                out.extend(f"      prioritized: {p}" for p in layer.blob.prioritized)
    return "\n".join(out) + "\n"
