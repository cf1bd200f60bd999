"""Python-version shims for FusionBench 0.2.33 (no FusionBench import here).

FusionBench's OpenCLIP model pool module (and with it its OpenCLIP task pool and classification mixin)
does ``from typing import override``, which exists from Python 3.12 on: on 3.10 / 3.11 none of them
imports. :func:`typing_override` gives ``typing`` the same decorator from ``typing_extensions`` (its
backport; a no-op at run time) when it lacks it. The Hydra search-path plugin calls it in every
``fusion_bench`` process, before any config's class is imported.
"""

from __future__ import annotations

import typing


def typing_override() -> None:
    if not hasattr(typing, "override"):
        try:
            from typing_extensions import override
        except ImportError:  # pragma: no cover - typing_extensions comes with torch
            return
        typing.override = override
