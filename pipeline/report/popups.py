"""The map's popups and legend: one case's facts, chips and navigation links; the legend of
statuses, classes and zones."""
from __future__ import annotations

import html

from pipeline.report.common import (
    CATEGORIES,
    CLASS_COLOURS,
    CLASSES,
    FIELDS,
    FLAGS,
    LAYERS,
    STATUS_COLOURS,
    STOCK,
    ZONE_COLOURS,
    ZONE_KINDS,
    change_text,
    height_text,
    label,
    missing,
    rule_texts,
    status_label,
    text,
)


def popup_rows(pairs: list[tuple[str, str]]) -> str:
    return "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in pairs if v)


def case_popup(c: dict, lang: str, rules, chips: list[dict], lonlat: tuple[float, float], crs: str,
               sheet_url: str | None) -> str:
    """Popup HTML of one case: every data value escaped."""
    F = lambda k: label(FIELDS, k, lang)  # noqa: E731
    conf = c.get("confidence")
    g = c["geometry"].centroid
    pairs = [
        (F("case_no"), text(c.get("case_no"))),
        (F("category"), label(CATEGORIES, c.get("category"), lang)),
        (F("status"), status_label(c.get("status"), lang, rules)),
        (F("stock"), label(STOCK, c.get("stock"), lang)),
        (F("detector_class"), label(CLASSES, c.get("detector_class"), lang)),
        (F("area_m2"), text(c.get("area_m2"))),
        (F("height_m"), height_text(c, lang)),
        (F("parcel_id"), text(c.get("parcel_id"))),
        (F("owner"), text(c.get("owner"))),
        (F("village"), " ".join(x for x in (text(c.get("town")), text(c.get("village"))) if x)),
        (F("confidence"), "" if missing(conf) else f"{float(conf):.2f}"),
        (F("flags"), "、".join(label(FLAGS, f, lang) for f in (c.get("flags") or []))),
        (F("change_confidence"), change_text(c, lang)),
        (F("deadline"), text(c.get("deadline"))),
        ("WGS84", f"{lonlat[1]:.6f}, {lonlat[0]:.6f}"),
        (crs, f"{g.x:.2f}, {g.y:.2f}"),
    ]
    out = [f'<div class="patrol-popup"><table>{popup_rows(pairs)}</table>']
    rt = rule_texts(c, lang, rules)
    if rt:
        out.append(f"<b>{html.escape(F('rules'))}</b><ul>"
                   + "".join(f"<li>{html.escape(r)}</li>" for r in rt) + "</ul>")
    if chips:
        figs = "".join(
            f'<figure><img src="{html.escape(ch["url"])}" alt="{html.escape(ch["role"])}" loading="lazy">'
            f'<figcaption>{html.escape(ch["role"])} {html.escape(ch["date"])}</figcaption></figure>'
            for ch in chips)
        out.append(f'<div class="chips">{figs}</div>')
    if sheet_url:
        out.append(f'<div><a href="{html.escape(sheet_url)}" target="_blank">'
                   f'{html.escape(label(LAYERS, "evidence_sheets", lang))}</a></div>')
    out.append("</div>")
    return "".join(out)


def legend_html(lang: str, rules, statuses, classes, zone_kinds) -> str:
    def sw(colour, name):
        return f'<div><i style="background:{colour}"></i>{html.escape(name)}</div>'
    parts = [f"<b>{html.escape(label(LAYERS, 'cases', lang))}</b>"]
    parts += [sw(STATUS_COLOURS.get(s, "#888"), status_label(s, lang, rules)) for s in statuses]
    if classes:
        parts.append(f"<b>{html.escape(label(LAYERS, 'detections', lang))}</b>")
        parts += [sw(CLASS_COLOURS.get(c, "#888"), label(CLASSES, c, lang)) for c in classes]
    if zone_kinds:
        parts.append(f"<b>{html.escape(label(LAYERS, 'zones', lang))}</b>")
        parts += [sw(ZONE_COLOURS.get(k, "#ccc"), label(ZONE_KINDS, k, lang)) for k in zone_kinds]
    return "".join(parts)


