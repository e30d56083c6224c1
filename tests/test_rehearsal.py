"""The rehearsal's simulated GPU: each crash class of a real GPU raises, correct code runs.

The audit patches torch process-wide, so it runs in a child interpreter; its code is written to a file whose
name marks it as a notebook cell (``ipykernel_``), the code the audit checks.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r'''
import json, torch
from course_utils.core import rehearsal, runtime
assert rehearsal.activate()
model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 3)).to(runtime.settings().device)
ids = torch.tensor([[1, 2, 3]])
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except Exception as e:
        out[name] = type(e).__name__ + ": " + str(e)[:200]
attempt("cpu input to the gpu model", lambda: model(ids))
attempt("moved input", lambda: model(runtime.to_device(ids, model)))
y = model(runtime.to_device(ids, model))
attempt("numpy of a gpu tensor", lambda: y.numpy())
attempt("numpy through to_numpy", lambda: runtime.to_numpy(y))
attempt("matplotlib-style np.asarray", lambda: __import__("numpy").asarray(y))
attempt("cpu constant in gpu math", lambda: y + torch.ones(3))
attempt("cpu scalar in gpu math", lambda: y * torch.tensor(2.0))
attempt("bucketize against cpu boundaries", lambda: torch.bucketize(y, torch.tensor([0.0, 1.0])))
attempt("factory on the gpu", lambda: y + torch.ones(3, device=y.device))
attempt("cpu tensor indexed by gpu indices", lambda: torch.zeros(5)[y.argmax(-1).flatten()])
attempt("device of a gpu tensor", lambda: (_ for _ in ()).throw(RuntimeError(str(y.device))) if str(y.device) != "cuda:0" else None)
import warnings
warnings.simplefilter("ignore")
from torch.ao.quantization import quantize_dynamic
lin = torch.nn.Sequential(torch.nn.Linear(4, 4))
qlin = quantize_dynamic(lin, {torch.nn.Linear}, dtype=torch.qint8)
attempt("cpu-only kernel on gpu input", lambda: qlin(torch.randn(2, 4).to("cuda")))
attempt("cpu-only kernel on cpu input", lambda: qlin(torch.randn(2, 4)))
attempt("module back to cpu", lambda: model.cpu()(ids))
print("RESULT" + json.dumps(out))
'''


def test_device_audit_catches_what_a_gpu_would(tmp_path):
    cell = tmp_path / "ipykernel_0" / "cell.py"
    cell.parent.mkdir()
    cell.write_text(CHILD)
    env = {**os.environ, "COURSE_PROFILE": "gpu", "COURSE_REHEARSAL": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(cell)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.split("RESULT", 1)[1])
    for name in ("cpu input to the gpu model", "numpy of a gpu tensor", "matplotlib-style np.asarray",
                 "cpu constant in gpu math", "bucketize against cpu boundaries", "cpu tensor indexed by gpu indices",
                 "cpu-only kernel on gpu input"):
        assert res[name] != "ok", f"the audit missed: {name}"
    assert "DeviceAuditError" in res["cpu input to the gpu model"]
    assert "can't convert cuda:0" in res["numpy of a gpu tensor"]
    for name in ("moved input", "numpy through to_numpy", "cpu scalar in gpu math", "factory on the gpu",
                 "device of a gpu tensor", "module back to cpu", "cpu-only kernel on cpu input"):
        assert res[name] == "ok", f"correct code failed in the rehearsal: {name}: {res[name]}"


def test_every_gpu_model_has_a_stand_in():
    from course_utils.core.models import REGISTRY
    from course_utils.tools.standins import SAME_WEIGHTS, _standin_specs

    specs = _standin_specs(100, 0, 1)
    for role, ids in REGISTRY.items():
        if ids["gpu"]:
            assert ids["gpu"] in specs, f"role {role}: no stand-in for {ids['gpu']}"
    assert all(arch in specs for arch in SAME_WEIGHTS.values())
    # Unsloth's Phi-3-mini checkpoints are Mistral-layout ("mistralfied"); Microsoft's is fused Phi-3.
    assert specs["unsloth/Phi-3-mini-4k-instruct-bnb-4bit"][0] == "MistralConfig"
    assert specs["microsoft/Phi-3-mini-4k-instruct"][0] == "Phi3Config"
