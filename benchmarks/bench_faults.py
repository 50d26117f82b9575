"""Faults and bad input, as a table: what each stage does with what a careless or unlucky user gives it.

Builds a small real workspace through the CLI (tiny_cnn on scikit-learn's digits: train, sample,
fit-predictor, search, calibrate), then runs every case of the "nothing lost, swapped or silently
wrong" list against it, each in a subprocess as a user would: output paths that hold a user's
files or another artifact, a kill in the middle of a replace, killed exports' staging, parents
swapped or moved under their children, non-finite values, oversized and malformed inputs,
misleading records, layers a conversion cannot quantize, damaged artifacts, and kill -9 during
training followed by --resume. For each case it records the exit status, whether a traceback
leaked, whether anything the user had was touched (a before/after hash of the paths at risk), and
the start of the message. The same cases are asserted in tests/test_faults.py,
tests/test_artifacts.py and tests/test_silent_math.py; this script produces the summary.

Run: python benchmarks/bench_faults.py (writes benchmarks/results/faults.json)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import ROOT, write_result

SPEC = {
    "name": "faults", "model": {"name": "tiny_cnn"}, "data": {"name": "digits", "val_size": 300},
    "space": {"w_bits": [2, 3, 4, 8], "a_bits": [2, 3, 4, 8]},
    "train": {"epochs": 6, "batch_size": 64, "steps_per_epoch": 6, "init_images": 128, "lr": 0.003, "compile": "off"},
    "calibrate": {"images": 256, "batch_size": 128},
    "sample": {"n": 24, "subset": 200, "calib_images": 128, "batch_size": 100},
    "predictor": {"epochs": 20}, "search": {"population": 16, "generations": 10},
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400", "PYTHONPATH": str(ROOT)}


def run(args: list[str], cwd: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eqtools", *args], cwd=cwd, env={**ENV, **(extra_env or {})},
                          capture_output=True, text=True)


def python(code: str, cwd: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env={**ENV, **(extra_env or {})},
                          capture_output=True, text=True)


def digest(*paths: Path) -> str:
    """One hash over every file (name and bytes) under ``paths``; missing paths hash as absent."""
    h = hashlib.sha256()
    for root in paths:
        if not root.exists():
            h.update(f"absent:{root}".encode())
            continue
        for f in sorted(root.rglob("*")) if root.is_dir() else [root]:
            if f.is_file():
                h.update(str(f.relative_to(root.parent)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()


class Table:
    def __init__(self, w: Path) -> None:
        self.w = w
        self.rows: list[dict] = []

    def case(self, group: str, label: str, proc: subprocess.CompletedProcess, *, at_risk: tuple[Path, ...] = (),
             before: str | None = None, expect: int = 2, check: Callable[[], bool] | None = None) -> None:
        text = " ".join((proc.stderr or proc.stdout).split())
        message = text.split("error: ", 1)[-1].replace(f"{self.w}/", "")
        touched = None if before is None else digest(*at_risk) != before
        ok = proc.returncode == expect and "Traceback" not in proc.stderr and not touched and (check is None or check())
        self.rows.append({"group": group, "case": label, "exit": proc.returncode, "expected_exit": expect,
                          "traceback": "Traceback" in proc.stderr, "touched": touched, "as_expected": ok,
                          "message": message[:150]})
        print(f"{'ok ' if ok else 'BAD'} [{proc.returncode}] {label}: {message[:100]}", file=sys.stderr)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmpdir:
        w = Path(tmpdir)
        (w / "spec.json").write_text(json.dumps(SPEC))
        for step in (["train", "spec.json", "-q"], ["sample", "--no-progress"], ["fit-predictor"],
                     ["search", "--w-bits", "4", "--granularity", "per-channel", "--symmetry", "sym"],
                     ["calibrate", "--w-bits", "4", "--granularity", "per-channel", "--symmetry", "sym", "--no-deployed"]):
            proc = run(step, w)
            if proc.returncode:
                sys.exit(f"setup step {step} failed: {proc.stderr[-2000:]}")
        a = Path("artifacts") / "faults"
        arts = {"supernet": a / "supernet", "samples": a / "samples", "predictor": next((w / a).glob("predictor-*")).relative_to(w),
                "search": next((w / a).glob("search-*")).relative_to(w), "calibrated": next((w / a).glob("calibrated-*")).relative_to(w)}
        t = Table(w)
        writers = {
            "train": ["train", "spec.json", "-q"],
            "calibrate": ["calibrate", "--w-bits", "4", "--granularity", "per-channel", "--symmetry", "sym"],
            "sample": ["sample", "-n", "4", "--no-progress"],
            "fit-predictor": ["fit-predictor", "--from", str(arts["samples"])],
            "search": ["search", "--w-bits", "3", "--granularity", "per-channel", "--symmetry", "sym"],
            "export": ["export", "--from", str(arts["calibrated"])],
        }

        # ---------------------------------------------------------------- 1. writes never destroy
        thesis = w / "thesis"
        (thesis / "sub").mkdir(parents=True)
        (thesis / "thesis.tex").write_text("\\chapter{One}")
        (thesis / "sub" / "data.csv").write_text("a,b\n1,2\n")
        (w / "notes.txt").write_text("mine")
        for name, argv in writers.items():
            before = digest(thesis)
            t.case("writes", f"`{name} --out DIR --force`, DIR holds thesis.tex and sub/data.csv",
                   run([*argv, "--out", "thesis", "--force"], w), at_risk=(thesis,), before=before)
            victim = w / f"existing-{name}"
            shutil.copytree(w / arts["samples"], victim)
            before = digest(victim)
            proc = run([*argv, "--out", victim.name], w)
            t.case("writes", f"`{name} --out ARTIFACT` without --force", proc, at_risk=(victim,), before=before)
        before = digest(w / "notes.txt")
        t.case("writes", "`calibrate --out FILE` (a plain file)", run([*writers["calibrate"], "--out", "notes.txt", "--force"], w),
               at_risk=(w / "notes.txt",), before=before)
        other = w / "existing-search"  # a copy of the samples artifact
        before = digest(other)
        t.case("writes", "`search --out ARTIFACT-OF-ANOTHER-KIND --force` (a samples artifact)",
               run([*writers["search"], "--out", other.name, "--force"], w), at_risk=(other,), before=before)
        target = w / "old-search"
        shutil.copytree(w / arts["search"], target)
        t.case("writes", "`search --out SEARCH-ARTIFACT --force` replaces it",
               run([*writers["search"], "--out", target.name, "--force"], w), expect=0,
               check=lambda: json.loads((target / "manifest.json").read_text())["created"]
               != json.loads((w / arts["search"] / "manifest.json").read_text())["created"])
        inputs = {"calibrate": "supernet", "sample": "supernet", "fit-predictor": "samples", "search": "predictor",
                  "export": "calibrated"}
        for name, kind in inputs.items():  # --force never replaces what the command reads
            before = digest(w / arts[kind])
            t.case("writes", f"`{name} --out ITS-INPUT --force` (the {kind} it reads)",
                   run([*writers[name], "--out", str(arts[kind]), "--force"], w), at_risk=(w / arts[kind],), before=before)
        before = digest(w / arts["supernet"])
        t.case("writes", "`fit-predictor --out SUPERNET --force` (what its input was made from)",
               run([*writers["fit-predictor"], "--out", str(arts["supernet"]), "--force"], w),
               at_risk=(w / arts["supernet"],), before=before)
        t.case("writes", "`calibrate --out SUPERNET/inside --force` (a path inside another artifact)",
               run([*writers["calibrate"], "--out", str(arts["supernet"] / "inside"), "--force"], w),
               at_risk=(w / arts["supernet"],), before=before)
        noted = w / "noted"
        shutil.copytree(w / arts["samples"], noted)
        (noted / "my-notes.md").write_text("ran on the big machine")
        before = digest(noted)
        t.case("writes", "`search --out ARTIFACT --force`, the user added my-notes.md inside it",
               run([*writers["search"], "--out", noted.name, "--force"], w), at_risk=(noted,), before=before)
        (w / "link").symlink_to(noted.name)
        t.case("writes", "`search --out LINK --force` (a symbolic link to an artifact)",
               run([*writers["search"], "--out", "link", "--force"], w), at_risk=(noted,), before=before)
        replacer = w / "replacer.py"
        replacer.write_text(
            "import os, sys\nimport eqtools.artifacts._store as store\nfrom eqtools.artifacts import write_artifact\n"
            "real = os.rename\n"
            "def rename(a, b):\n    real(a, b)\n    os._exit(9)\n"
            "store.os.rename = rename\n"
            "write_artifact(sys.argv[1], 'export', lambda t: (t / 'x.json').write_text('{}'))\n")
        for mode, env in (("renameat2(RENAME_EXCHANGE)", {}), ("two renames (fallback)", {"EQTOOLS_NO_RENAME_EXCHANGE": "1"})):
            victim = w / f"replace-{len(t.rows)}"
            shutil.copytree(w / arts["search"], victim)
            proc = subprocess.run([sys.executable, str(replacer), str(victim)], cwd=w, env={**ENV, **env},
                                  capture_output=True, text=True)
            present = (victim / "manifest.json").is_file()
            after = run(["info", victim.name, "--json"], w)
            t.case("writes", f"killed right after the first rename of a replace, {mode}: path never empty: {present}",
                   after, expect=0, check=lambda after=after: json.loads(after.stdout)["kind"] in ("search", "export"))
        dead = w / a / f".{arts['calibrated'].name}.export-999999999-x1y2"
        dead.mkdir()
        listed = run(["info", str(a)], w)
        t.case("writes", "a killed export's staging directory is listed by `eqtools info WORKSPACE`", listed, expect=0,
               check=lambda: dead.name in listed.stdout)
        elsewhere = w / a / f".{arts['calibrated'].name}.tmp-1@00000000-x1y2"  # another machine's or container's
        elsewhere.mkdir()
        cleaned = run([*writers["calibrate"], "--out", str(arts["calibrated"]), "--force", "--no-deployed"], w)
        t.case("writes", "... and removed by the next write to that path", cleaned, expect=0, check=lambda: not dead.exists())
        t.case("writes", "... but another machine's staging beside it is left alone", cleaned, expect=0,
               check=lambda: elsewhere.is_dir())

        # ---------------------------------------------------------------- 2. lineage
        lin = w / "lineage"
        shutil.copytree(w / "artifacts", lin / "artifacts")
        retrain = ["train", str(w / "spec.json"), "-q", "--force", "--set", "train.lr=0.002"]
        assert run(retrain, lin).returncode == 0
        t.case("lineage", "supernet retrained at the same path, then `export --from SEARCH`",
               run(["export", "--from", str(arts["search"]), "--out", "e"], lin), at_risk=(lin / "e",),
               before=digest(lin / "e"))
        t.case("lineage", "... then `calibrate --searched`", run(["calibrate", "--searched", "--out", "c"], lin))
        t.case("lineage", "... then `report`", run(["report"], lin))
        # outside `w`: a relative recorded parent is also looked for above the child's directories, and
        # w/artifacts holds a byte-identical copy of the supernet (which its checksum would rightly accept)
        apart = Path(tempfile.mkdtemp(prefix="eqtools-faults-"))
        lin2 = apart / "lineage2"
        shutil.copytree(w / "artifacts", lin2 / "artifacts")
        shutil.move(lin2 / arts["supernet"], lin2 / "moved-away")
        shutil.copytree(w / arts["supernet"], lin2 / a / "other-supernet")
        t.case("lineage", "supernet moved away (another one in the workspace), then `search --verify`",
               run([*writers["search"], "--verify", "--out", "s"], lin2))
        shutil.rmtree(apart)
        lin3 = w / "lineage3"
        shutil.copytree(w / "artifacts", lin3 / "artifacts")
        assert run(["train", str(w / "spec.json"), "-q", "--out", str(a / "newer"), "--set", "train.lr=0.002"], lin3).returncode == 0
        proc = run(["calibrate", "--searched", "--out", "c", "--no-deployed", "--images", "128"], lin3)
        t.case("lineage", "a newer supernet in the workspace, then `calibrate --searched`: uses the search's own",
               proc, expect=0, check=lambda: json.loads((lin3 / "c" / "manifest.json").read_text())["parents"][0]["path"]
               == str(arts["supernet"]))

        # ---------------------------------------------------------------- 3. non-finite values
        for field, token in (("train.lr", "Infinity"), ("train.wdr.kurtosis_target", "NaN")):
            text = json.dumps(SPEC).replace('"lr": 0.003', f'"lr": {token}') if field == "train.lr" else json.dumps(
                {**SPEC, "train": {**SPEC["train"], "wdr": {"kurtosis_target": float("nan")}}})
            (w / "nonfinite.json").write_text(text)
            t.case("non-finite", f"spec with `{field}: {token}`", run(["train", "nonfinite.json", "--out", "nf"], w),
                   at_risk=(w / "nf",), before=digest(w / "nf"))
        t.case("non-finite", "`train.lr: 1e30` (finite, but overflows float32 in the optimiser)",
               run(["train", "spec.json", "--out", "div", "-q", "--set", "train.lr=1e30", "--set", "train.grad_clip=null"], w),
               at_risk=(w / "div",), before=digest(w / "div"))
        strict = python("import json, pathlib\nfrom eqtools.artifacts import strict_json_loads\n"
                        "n = 0\nfor p in pathlib.Path('.').rglob('manifest.json'):\n    strict_json_loads(p.read_text()); n += 1\n"
                        "print(n)", w)
        t.case("non-finite", f"every manifest written in this run parses as strict JSON ({strict.stdout.strip()} manifests)",
               strict, expect=0)

        # ---------------------------------------------------------------- 4. bad input
        resigned = w / "resigned"
        shutil.copytree(w / arts["predictor"], resigned)
        m = json.loads((resigned / "manifest.json").read_text())
        m["metrics"]["n_test"] = "twenty"
        (resigned / "manifest.json").write_text(json.dumps(m))
        sign = subprocess.run([sys.executable, "-c", "import json, sys\nfrom eqtools.artifacts import manifest_checksum\n"
                               "m = json.load(open(sys.argv[1]))\nm['checksum'] = manifest_checksum(m)\n"
                               "open(sys.argv[1], 'w').write(json.dumps(m))", str(resigned / "manifest.json")],
                              env=ENV, capture_output=True, text=True)
        assert sign.returncode == 0, sign.stderr
        t.case("bad input", "manifest with a wrong-typed field, re-signed", run([*writers["search"], "--predictor", "resigned",
                                                                                 "--out", "s2"], w))
        (w / "ck.work").mkdir()
        (w / "ck.work" / "checkpoint.pt").write_bytes(b"PK\x03\x04garbage")
        t.case("bad input", "corrupt checkpoint on `train --resume`", run(["train", "spec.json", "--out", "ck", "--resume"], w))
        for label, change in (("`seed: 1e30`", {"seed": 1e30}), ("a 5000-character spec name", {"name": "x" * 5000})):
            (w / "bad.json").write_text(json.dumps({**SPEC, **change}))
            t.case("bad input", label, run(["train", "bad.json"], w))
        for argv in (["-n", "1000000000"], ["-n", "1e9"], ["-n", "3000000", "--shard", "1/1000"]):
            t.case("bad input", f"`sample {' '.join(argv)}`", run(["sample", "--no-progress", "--out", "big", *argv], w),
                   at_risk=(w / "big",), before=digest(w / "big"))
        idx = w / "idx"
        idx.mkdir()
        import struct

        def idx_file(shape: tuple[int, ...], size: int | None = None) -> bytes:
            n = 1
            for s in shape:
                n *= s
            return bytes([0, 0, 8, len(shape)]) + struct.pack(">" + "I" * len(shape), *shape) + bytes(n if size is None else size)

        for name, shape in (("train-images-idx3-ubyte", (40, 4, 4)), ("train-labels-idx1-ubyte", (40,)),
                            ("t10k-images-idx3-ubyte", (10, 4, 4)), ("t10k-labels-idx1-ubyte", (10,))):
            (idx / name).write_bytes(idx_file(shape))
        for label, content in (("a truncated idx file", idx_file((40, 4, 4), 300)),
                               ("a malformed idx header", b"\x00\x00\x08\x03\x00\x00")):
            (idx / "train-images-idx3-ubyte").write_bytes(content)
            (w / "idx.json").write_text(json.dumps({**SPEC, "data": {"name": "fashion-mnist", "root": str(idx), "val_size": 10}}))
            t.case("bad input", label, run(["train", "idx.json", "--out", "o-idx"], w))
        (w / "latin1.json").write_bytes(b'{"granularity": "per-channel\xe9"}')
        t.case("bad input", "a non-UTF-8 `--config` file", run(["calibrate", "--config", "latin1.json", "--out", "o-cfg"], w))
        t.case("bad input", "`train --device cuda` on a machine without a GPU",
               run(["train", "spec.json", "--out", "o-cuda", "--device", "cuda"], w),
               expect=0 if python("import torch; print(torch.cuda.is_available())", w).stdout.strip() == "True" else 2)

        # ---------------------------------------------------------------- 5. records
        (w / "etc.json").write_text(json.dumps({**SPEC, "data": {"name": "fashion-mnist", "root": "/etc"}}))
        t.case("records", "`data.root: /etc` (the dataset is elsewhere)", run(["train", "etc.json", "--out", "o-etc"], w))
        t.case("records", "`sample --subset 100000000` (the val split has 300 images)",
               run(["sample", "--subset", "100000000", "--no-progress", "--out", "o-sub"], w))
        record = json.loads((w / arts["supernet"] / "manifest.json").read_text())["metrics"]["data"]
        t.case("records", f"the supernet records what it read: {record}", subprocess.CompletedProcess([], 0, "", ""), expect=0)

        # ---------------------------------------------------------------- 6. what stays float
        lstm = ("import torch, warnings\nfrom torch import nn\nfrom eqtools.quant import quantize_model\n"
                "class M(nn.Module):\n    def __init__(s):\n        super().__init__(); s.a = nn.Conv2d(1, 8, 3, padding=1); "
                "s.b = nn.Conv2d(8, 8, 3, padding=1); s.r = nn.LSTM(64, 64, batch_first=True); s.h = nn.Linear(64, 10)\n"
                "    def forward(s, x):\n        h = s.b(s.a(x)); y, _ = s.r(h.permute(0, 3, 1, 2).flatten(2)); return s.h(y[:, -1])\n"
                "quantize_model(M(), {'w_bits': [2, 4, 8]}, torch.randn(1, 1, 8, 8), strict=STRICT)\n")
        for strict in (True, False):
            proc = python(lstm.replace("STRICT", str(strict)), w)
            label = "`quantize_model(strict=True)` on an LSTM model" if strict else "`quantize_model` on an LSTM model (warns by name)"
            t.case("float layers", label, subprocess.CompletedProcess([], 2 if strict and "CoverageError" in proc.stderr else proc.returncode,
                                                                      "", proc.stderr.splitlines()[-1] if proc.stderr else ""),
                   expect=2 if strict else 0, check=lambda p=proc: "r.weight_ih_l0" in p.stderr)
        two = ("import torch\nfrom torch import nn\nfrom eqtools.quant import quantize_model\n"
               "m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(144, 10))\n"
               "quantize_model(m, {'w_bits': [2, 4, 8]}, torch.randn(1, 1, 8, 8))\n")
        proc = python(two, w)
        t.case("float layers", "a model with no elastic layer", subprocess.CompletedProcess(
            [], 2 if "SpecError" in proc.stderr else proc.returncode, "", proc.stderr.splitlines()[-1] if proc.stderr else ""))

        # ---------------------------------------------------------------- 7. damaged artifacts
        commands = {
            "supernet": lambda p: ["calibrate", "--from", str(p), "--w-bits", "4", "--granularity", "per-channel", "--symmetry", "sym"],
            "samples": lambda p: ["fit-predictor", "--from", str(p)],
            "predictor": lambda p: ["search", "--predictor", str(p), "--w-bits", "4", "--granularity", "per-channel", "--symmetry", "sym"],
            "calibrated": lambda p: ["export", "--from", str(p)],
        }
        for kind, command in commands.items():
            for how in ("truncated file", "bit flip", "edited manifest", "newer format_version", "one digit of a JSON payload"):
                target = w / "damaged" / f"{kind}-{how}".replace(" ", "-")
                shutil.copytree(w / arts[kind], target)
                manifest = json.loads((target / "manifest.json").read_text())
                if how == "one digit of a JSON payload":
                    jsons = [n for n in manifest["files"] if n.endswith((".json", ".jsonl"))]
                    payload = target / jsons[0]
                else:
                    payload = max((target / n for n in manifest["files"]), key=lambda f: f.stat().st_size)
                if how == "truncated file":
                    payload.write_bytes(payload.read_bytes()[: payload.stat().st_size // 2])
                elif how == "bit flip":
                    data = bytearray(payload.read_bytes())
                    data[len(data) // 2] ^= 0x10
                    payload.write_bytes(bytes(data))
                elif how == "edited manifest":
                    manifest["metrics"]["edited"] = True
                    (target / "manifest.json").write_text(json.dumps(manifest))
                elif how == "newer format_version":
                    manifest["format_version"] += 1
                    (target / "manifest.json").write_text(json.dumps(manifest))
                else:
                    text = payload.read_text()
                    i = next(k for k in [*range(len(text) // 2, len(text)), *range(len(text) // 2)] if text[k].isdigit())
                    payload.write_text(text[:i] + str((int(text[i]) + 1) % 10) + text[i + 1:])
                out = w / "out" / target.name
                t.case("damaged", f"{how} in a {kind} -> `{command(Path('X'))[0]}`", run([*command(target), "--out", str(out)], w),
                       at_risk=(out,), before=digest(out))

        # ---------------------------------------------------------------- 8. kill -9 during train, --resume
        ref = run(["train", "spec.json", "--out", "ref", "-q"], w)
        assert ref.returncode == 0, ref.stderr
        proc = subprocess.Popen([sys.executable, "-m", "eqtools", "train", "spec.json", "--out", "killed", "-q"], cwd=w,
                                env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ckpt = w / "killed.work" / "checkpoint.pt"
        while not ckpt.exists() and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        resumed = run(["train", "spec.json", "--out", "killed", "--resume", "-q"], w)
        from safetensors.torch import load_file

        a_w, b_w = load_file(str(w / "ref" / "weights.safetensors")), load_file(str(w / "killed" / "weights.safetensors"))
        t.case("resume", "kill -9 during train, then --resume: final weights bit-identical to an uninterrupted run",
               resumed, expect=0, check=lambda: all((a_w[k] == b_w[k]).all() for k in a_w))

    rows = t.rows
    lines = ["| group | case | exit | traceback | user's files touched | as expected | message |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        touched = "-" if r["touched"] is None else ("yes" if r["touched"] else "no")
        msg = r["message"].replace("|", "/")[:110]
        lines.append(f"| {r['group']} | {r['case'].replace('|', '/')} | {r['exit']} | {'yes' if r['traceback'] else 'no'} | "
                     f"{touched} | {'yes' if r['as_expected'] else '**no**'} | {msg} |")
    good = sum(r["as_expected"] for r in rows)
    summary = (f"{good} of {len(rows)} cases as expected; {sum(r['traceback'] for r in rows)} tracebacks; "
               f"{sum(bool(r['touched']) for r in rows)} cases touched what the user had")
    body = summary + "\n\n" + "\n".join(lines)
    print(body)
    write_result("faults", "Is anything a user owns lost, swapped or silently wrong, and does every bad input exit 2 "
                           "with a message and nothing half-written?",
                 {"cases": rows, "as_expected": good, "total": len(rows)}, body)


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
