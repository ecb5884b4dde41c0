"""Inputs outside the networks' domain: readable images that are not anatomy the networks can judge.

A perfusion map, an ADC map or an RT dose grid holds a quantity, not an anatomical contrast; a harmonizer would
restyle it and a detector would score it as if it were a head, both without meaning. Images a few pixels wide
are below what the networks' receptive fields can see. Such scans are skipped with the reason, or processed with
a warning when the user asks (``sgad-med run --on-unsupported warn``).
"""

from __future__ import annotations

from sgad_med.io.scan import Scan

#: SOP classes whose pixels are a quantity, not an anatomical image.
MAP_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.30": "Parametric Map",
    "1.2.840.10008.5.1.4.1.1.481.2": "RT Dose",
}

#: ImageType values that mark a derived parametric map (perfusion, diffusion and relaxometry maps).
MAP_IMAGE_TYPES = {
    "RCBF": "relative cerebral blood flow", "RCBV": "relative cerebral blood volume", "CBF": "cerebral blood flow",
    "CBV": "cerebral blood volume", "MTT": "mean transit time", "TTP": "time to peak", "TMAX": "time to maximum",
    "PERFUSION": "perfusion", "ADC": "apparent diffusion coefficient", "EADC": "exponential ADC",
    "FA": "fractional anisotropy", "T1MAP": "T1 map", "T2MAP": "T2 map", "T2STARMAP": "T2* map",
}

#: The smallest in-plane side, in pixels, the networks are meant for.
MIN_SLICE_SIDE = 16

ON_UNSUPPORTED = ("skip", "warn")


def unsupported_reason(scan: Scan, slice_axis: int = 2) -> str | None:
    """Why ``scan`` lies outside the networks' domain, or ``None`` when it does not.

    Args:
        scan: the loaded scan.
        slice_axis: the RAS axis its slices are taken along (the in-plane size is checked on the other two).

    Returns:
        One sentence naming the problem, or ``None``.
    """
    if scan.dicom_headers:
        header = scan.dicom_headers[0]
        sop_class = str(header.get("SOPClassUID", ""))
        if sop_class in MAP_SOP_CLASSES:
            return f"a DICOM {MAP_SOP_CLASSES[sop_class]} object: a parametric map, not an anatomical image"
        image_type = [str(v).strip().upper() for v in (header.get("ImageType") or [])]
        maps = [v for v in image_type if v in MAP_IMAGE_TYPES]
        if maps:
            what, values = ", ".join(MAP_IMAGE_TYPES[v] for v in maps), "\\".join(image_type)
            return f"ImageType {values} marks a parametric map ({what}), not an anatomical image"
    sides = [scan.shape[i] for i in range(3) if i != slice_axis]
    if min(sides) < MIN_SLICE_SIDE:
        return (f"its slices are {sides[0]}x{sides[1]} pixels; the networks need at least {MIN_SLICE_SIDE} on "
                "each side")
    return None
