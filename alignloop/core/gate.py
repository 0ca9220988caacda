"""The promotion gate: does a round's candidate replace the champion? A pure function of two metric dicts."""

from __future__ import annotations


def gate_decision(candidate: dict, champion: dict, *, beat: list[str], min_improvement: float = 0.0,
                  caps: dict[str, float] | None = None, floors: dict[str, float] | None = None,
                  lower_bounds: dict[str, float] | None = None, lows: dict[str, float] | None = None
                  ) -> tuple[bool, list[str]]:
    """(promote, reasons). Every rule is checked and reported, passed or failed, so the decision explains itself.

    ``beat``: metrics the candidate must exceed the champion on by more than ``min_improvement`` (a tie does not
    promote: the champion stays unless beaten). ``caps``/``floors``: absolute limits on the candidate alone.
    ``lower_bounds``: metric -> value its confidence interval's lower end (``lows``, from eval.json's ``<m>_ci``)
    must exceed, e.g. a judge's win-rate vs the champion whose interval lies wholly above 0.5: better, and not by luck.
    A metric missing from the candidate fails its rule; one missing from the champion is a rule that cannot be
    judged, which also fails, so a gate never promotes on a comparison it could not make.
    """
    ok, reasons = True, []
    for m in beat:
        c, b = candidate.get(m), champion.get(m)
        if c is None or b is None:
            ok = False
            reasons.append(f"FAIL {m}: missing ({'candidate' if c is None else 'champion'} has no {m})")
        elif c > b + min_improvement:
            reasons.append(f"pass {m}: {c:.4f} > champion {b:.4f}" + (f" + {min_improvement}" if min_improvement else ""))
        else:
            ok = False
            reasons.append(f"FAIL {m}: {c:.4f} <= champion {b:.4f}" + (f" + {min_improvement}" if min_improvement else ""))
    for m, cap in sorted((caps or {}).items()):
        c = candidate.get(m)
        if c is None:
            ok = False
            reasons.append(f"FAIL {m}: missing (cap {cap})")
        elif c <= cap:
            reasons.append(f"pass {m}: {c:.4f} <= cap {cap}")
        else:
            ok = False
            reasons.append(f"FAIL {m}: {c:.4f} > cap {cap}")
    for m, floor in sorted((floors or {}).items()):
        c = candidate.get(m)
        if c is None:
            ok = False
            reasons.append(f"FAIL {m}: missing (floor {floor})")
        elif c >= floor:
            reasons.append(f"pass {m}: {c:.4f} >= floor {floor}")
        else:
            ok = False
            reasons.append(f"FAIL {m}: {c:.4f} < floor {floor}")
    for m, bound in sorted((lower_bounds or {}).items()):
        low = (lows or {}).get(m)
        if low is None:
            ok = False
            reasons.append(f"FAIL {m}: no confidence interval (lower bound must exceed {bound})")
        elif low > bound:
            reasons.append(f"pass {m}: interval low {low:.4f} > {bound}")
        else:
            ok = False
            reasons.append(f"FAIL {m}: interval low {low:.4f} <= {bound}")
    return ok, reasons
