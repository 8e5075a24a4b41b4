"""The report of ``benchmarks/tuning.py``: its tables from the stored results (docs/benchmarks/tuning.json)."""

from __future__ import annotations


def with_coefficients(r: dict) -> list[tuple[float, bool]]:
    """A row's tuned grid and, where its fitted coefficients were kept, the grid with them: ``(RMS, with
    coefficients)`` (a row whose coefficient fit lost runs the sampler's own, named without them)."""
    return [(r["tuned"], False)] + ([(r["coef"], True)] if r.get("coefficients", 1) else [])


def best_tuned(at: list[dict]) -> tuple[float, str, dict, bool]:
    """A cell's best tuned configuration on the benchmark's draws (any row's grid alone, or with its
    kept coefficients): ``(RMS, label, row, with coefficients)``."""
    return min(((v, f"{r['sampler']}{' + coefficients' if c else ''}", r, c) for r in at for v, c in with_coefficients(r)),
               key=lambda e: e[:2])


def report(cert, mix, revision: int, fresh=(), peer_fresh=None) -> str:
    """The report's Markdown; rows (and the cells holding one) fitted by an older revision than
    ``revision`` are marked. ``fresh``: each cell's best tuned configuration on the ODE benchmark's
    fresh draws; ``peer_fresh``: that benchmark's fresh rows, ``{(problem, process, nfe, method): row}``."""
    def older(rows):
        return " †" if any(r.get("fit_revision") != revision for r in rows) else ""

    out = ["# Grids tuned to the model", "",
           "`python benchmarks/tuning.py`. See `sdeflow.tuning` and docs/tuning.md for the methods.", ""]
    if cert:
        out += ["## The certificate: exact W2 on a 16-D Gaussian", "",
                "Exact W2 between each sampler's output law and the data (no Monte Carlo error). Fitted grids use 100 "
                "draws against the teacher, with `optimize_grid`'s defaults (30% held out, the worst 10% trimmed); a fit "
                "that does not beat the best hand grid on the held-out draws, or loses to it in the RMS over all the draws, "
                "returns that grid (marked `hand:`). The "
                "coefficients are fitted on the `dp+descent` grid and the same draws (a fifth held out).", "",
                "| schedule | sampler | NFE | exact-optimal | dp+descent | dp+descent + coefficients | dp | descent "
                "| AYS tangent law | best hand grid |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        def returned(r, method):
            name = r.get(method + " returned", "")
            return f", {name}" if name.startswith("hand:") else ""

        for r in cert:
            c = r.get("coefficients", float("nan"))
            out.append(f"| {r['schedule']} | {r['sampler']} | {r['nfe']} | {r['exact_optimal']:.3e} | {r['dp+descent']:.3e} "
                       f"({r['dp+descent'] / r['exact_optimal']:.2f}x{returned(r, 'dp+descent')}) | "
                       f"{c:.3e} ({c / r['exact_optimal']:.2f}x) | "
                       f"{r['dp']:.3e} ({r['dp'] / r['exact_optimal']:.1f}x{returned(r, 'dp')}) | "
                       f"{r['descent']:.3e} ({r['descent'] / r['exact_optimal']:.2f}x{returned(r, 'descent')}) | {r['ays']:.3e} "
                       f"({r['ays'] / r['exact_optimal']:.1f}x) | {r['hand']:.3e} "
                       f"({r['hand'] / r['exact_optimal']:.1f}x, {r['hand_grid']}) |")
        out.append("")
    if mix:
        out += ["## The ODE benchmark's problems", "",
                "Endpoint RMS error on the benchmark's draws against its reference solve. `tuned grid`: the grid fitted "
                "on 100 other draws; `+ coefficients`: the sampler's coefficients fitted on the tuned grid and on the hand grid "
                "that is best on the coefficient draws, the one with the lower held-out error kept (named), on "
                + ", ".join(f"{n} further draws ({p})" for p, n in dict.fromkeys((r["problem"], r["coef_draws"]) for r in mix))
                + " (a fifth held out for early stopping); `hand`: the same sampler's "
                "best hand grid, from where the fits start (on rectified flow t = 0.999: its first time moved there "
                "from 1); `best sdeflow` / `best peer`: the best row of any method and grid in "
                "docs/benchmarks/ode_solvers.json at that NFE (peers: diffusers, k-diffusion, flow_matching), all run "
                "from t = 1, on rectified flow another start of the same draws than the other columns'. Costs: "
                "model evaluations of the fits (teachers included; each on its batch of draws), and the evaluations "
                "the coefficient fit differentiated through.", "",
                "| problem | process | sampler | NFE | hand (grid) | tuned grid | + coefficients | best sdeflow hand | best peer "
                "| tuned grid / best peer | + coefficients / best peer | fit cost (grid; coefficients, of them differentiated) |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        def own(r):  # a coefficient fit that lost on its held-out draws keeps the sampler's own
            return ", own kept" if r.get("coefficients", 1) == 0 else ""

        for r in mix:
            peer = r["best_peer"][0] if r["best_peer"] else float("nan")
            bs = r["best_sdeflow"][0] if r["best_sdeflow"] else float("nan")
            hand = r["hand"] if r["hand"] is not None else float("nan")
            out.append(f"| {r['problem']} | {r['process'].split(' (')[0]} | {r['sampler']} | {r['nfe']}{older([r])} | "
                       f"{hand:.3e} ({r['hand_grid']}) | {r['tuned']:.3e} | {r['coef']:.3e} ({r.get('coef_grid', 'tuned')}{own(r)}) | "
                       f"{bs:.3e} | {peer:.3e} | "
                       f"{r['tuned'] / peer:.2f} | **{r['coef'] / peer:.2f}** | "
                       f"{r['cost_nfe']}; {r['coef_cost_nfe']}, {r['coef_cost_grad']} |")
        out += ["", "Best of each process and NFE (any tuned sampler, grid only or with coefficients), chosen on the "
                "benchmark's draws; then both choices run again on the ODE benchmark's fresh draws (4 times as many, "
                "seed 1: those its best peer was run on again; `python benchmarks/tuning.py --part 2 --fresh`), where "
                "neither keeps the luck of the draws it was chosen on:", "",
                "| problem | process | NFE | best tuned | best peer | ratio | fresh draws: best tuned | best peer | ratio |",
                "|---|---|---|---|---|---|---|---|---|"]
        on_fresh = {(f["problem"], f["process"], f["nfe"]): f for f in fresh}

        def again(key, at, hand: bool) -> tuple:
            """RMS on the fresh draws of the cell's choice (its best tuned configuration, or with ``hand``
            the ODE benchmark's best sdeflow row) and of its best peer; None where not run."""
            label = best_tuned(at)[1]
            if hand:
                mine = (peer_fresh or {}).get((*key, at[0]["best_sdeflow"][1]))
            else:
                mine = on_fresh.get(key) if on_fresh.get(key, {}).get("label") == label else None
            peer = (peer_fresh or {}).get((*key, at[0]["best_peer"][1])) if at[0]["best_peer"] else None
            return (mine and mine["rms"]), (peer and peer["rms"])

        def shown(mine, peer) -> str:
            return " | ".join([f"{mine:.3e}" if mine else "-", f"{peer:.3e}" if peer else "-",
                               f"**{mine / peer:.2f}**" if mine and peer else "-"])

        for key in dict.fromkeys((r["problem"], r["process"], r["nfe"]) for r in mix):
            at = [r for r in mix if (r["problem"], r["process"], r["nfe"]) == key]
            err, label, _, _ = best_tuned(at)
            peer = at[0]["best_peer"][0] if at[0]["best_peer"] else float("nan")
            out.append(f"| {key[0]} | {key[1].split(' (')[0]} | {key[2]}{older(at)} | {err:.3e} ({label}) | {peer:.3e} "
                       f"({at[0]['best_peer'][1] if at[0]['best_peer'] else '-'}) | **{err / peer:.2f}** | "
                       f"{shown(*again(key, at, hand=False))} |")
        out += ["", "sdeflow's best, hand grid or tuned, against the best peer, with the target: at most half the best "
                "peer at NFE 5-8, at most the best peer at NFE 10-20; then the two choices (made on the benchmark's draws) "
                "on the fresh draws, with the target judged there:", "",
                "| problem | process | NFE | best sdeflow (hand or tuned) | best peer | ratio | target | median error: best "
                "sdeflow / best peer | fresh draws: ratio | target |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        order = {p: k for k, p in enumerate(["2-D mixture", "64-D mixture", "3x32x32 mixture"])}
        for key in sorted(dict.fromkeys((r["problem"], r["process"], r["nfe"]) for r in mix),
                          key=lambda k: (order.get(k[0], 9), k[0], k[1], k[2])):
            at = [r for r in mix if (r["problem"], r["process"], r["nfe"]) == key]
            if not at[0]["best_peer"]:
                continue
            tuned_err, tuned_label = best_tuned(at)[:2]
            options = [(tuned_err, f"{tuned_label}, tuned")]
            if at[0]["best_sdeflow"]:
                options.append((at[0]["best_sdeflow"][0], at[0]["best_sdeflow"][1].removeprefix("sdeflow ")))
            err, label = min(options)
            mine_fresh, peer_fresh_rms = again(key, at, hand=label != options[0][1])
            fresh_ratio = mine_fresh / peer_fresh_rms if mine_fresh and peer_fresh_rms else None
            peer = at[0]["best_peer"][0]
            goal = 0.5 if key[2] <= 8 else 1.0  # judged on the ratio as shown: the same method as a peer's ties
            medians = [r[k] for r in at for k in ("tuned_median", "coef_median") if r.get(k) is not None]
            if at[0].get("best_sdeflow_median"):
                medians.append(at[0]["best_sdeflow_median"][0])
            peer_median = (at[0].get("best_peer_median") or [None])[0]
            median = (f"{min(medians):.3e} / {peer_median:.3e} = {min(medians) / peer_median:.2f}"
                      if medians and peer_median else "-")
            out.append(f"| {key[0]} | {key[1].split(' (')[0]} | {key[2]}{older(at)} | {err:.3e} ({label}) | {peer:.3e} | "
                       f"**{err / peer:.2f}** | {'met' if round(err / peer, 2) <= goal else 'missed'} (<= {goal:g}) | "
                       f"{median} | " + (f"**{fresh_ratio:.2f}** | {'met' if round(fresh_ratio, 2) <= goal else 'missed'} |"
                                        if fresh_ratio else "- | - |"))
        if older(mix):
            out += ["", "† A row (or a cell with a row) fitted by an older revision of the fitting, before the held-out "
                    "split, the trimmed loss and the check on all draws; `python benchmarks/tuning.py --part 2 --stale "
                    "--problems NAME` fits them again."]
    return "\n".join(out) + "\n"
