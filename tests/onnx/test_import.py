"""PyTorch -> ONNX (torch.onnx.export, TorchScript exporter) -> dlc: the
imported program with the imported weights gives ONNX Runtime's outputs
at batch 1 and 37, and fine-tunes step for step as PyTorch does."""
import re
import warnings

import numpy as np
import pytest

NEEDS = "the ONNX tests need onnx, onnxruntime and torch: pip install '.[test]'"
onnx = pytest.importorskip("onnx", reason=NEEDS)
ort = pytest.importorskip("onnxruntime", reason=NEEDS)
torch = pytest.importorskip("torch", reason=NEEDS)
nn, F = torch.nn, torch.nn.functional

import dlc  # noqa: E402
from dlc.errors import DlcError  # noqa: E402
from dlc.onnx import export_model, import_model  # noqa: E402
from test_export import EXAMPLE_DIR, EXAMPLES, IMAGES, RECURRENT, perturbed, random_inputs  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(20, 32), nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


class SeqMLP(nn.Module):
    """nn.Linear over [batch, time, features]: MatMul + Add in ONNX."""
    def __init__(self):
        super().__init__()
        self.proj, self.head = nn.Linear(6, 8), nn.Linear(8, 3, bias=False)

    def forward(self, x):
        return self.head(F.leaky_relu(self.proj(x), 0.2))


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 5, padding=2), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(x.size(0), -1)   # the Shape -> Gather -> Concat -> Reshape chain
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class CifarCNN(nn.Module):
    """examples/cifar_cnn.dl in PyTorch."""
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1)
        self.conv3, self.conv4 = nn.Conv2d(32, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(4096, 512), nn.Linear(512, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = F.max_pool2d(F.relu(self.conv4(F.relu(self.conv3(x)))), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class BasicBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class ResBlockNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.block = nn.Conv2d(3, 8, 3, stride=2, padding=1), BasicBlock(8)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 10)

    def forward(self, x):
        h = F.avg_pool2d(self.block(self.stem(x)), 2, stride=1)
        return self.fc(torch.flatten(self.pool(h), 1))


MODELS = {"mlp": (MLP, (20,)), "seq_mlp": (SeqMLP, (5, 6)), "lenet": (LeNet, (1, 28, 28)),
          "cifar_cnn": (CifarCNN, (3, 32, 32)), "resblock": (ResBlockNet, (3, 16, 16))}


def make(kind, seed=0):
    torch.manual_seed(seed)
    cls, shape = MODELS[kind]
    m = cls()
    for mod in m.modules():   # running statistics that are not the initial 0 / 1
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.5, 0.5)
    return m.eval(), shape


def export(m, shape, path, opset, keep_batchnorm=True):
    """torch.onnx.export with a dynamic batch axis; keep_batchnorm keeps
    BatchNormalization nodes (else the exporter folds them into the convs)."""
    mode = torch.onnx.TrainingMode.PRESERVE if keep_batchnorm else torch.onnx.TrainingMode.EVAL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, torch.randn(2, *shape), str(path), dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["y"], training=mode,
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})


def compiled(source, weights):
    prog = dlc.compile(source)
    assert set(weights) == set(prog.params)   # every param comes from the file
    for name, w in weights.items():
        prog.params[name] = w
    return prog


@pytest.mark.parametrize("opset", [13, 17, 21])
@pytest.mark.parametrize("kind", list(MODELS))
def test_import_matches_ort(kind, opset, tmp_path):
    m, shape = make(kind)
    path = tmp_path / f"{kind}.onnx"
    export(m, shape, path, opset)
    source, weights = import_model(path, model="net")
    assert "input x: f32[batch, " in source
    prog = compiled(source, weights)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch in (1, 37):
        x = rng.normal(size=(batch, *shape)).astype(np.float32)
        want = session.run(None, {"x": x})[0]
        got = prog.run("net", x=x)["y"]
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=f"{kind} at batch {batch}")


def test_folded_batchnorm_imports(tmp_path):
    """The exporter's default eval mode folds batchnorm into the convs
    (weights named onnx::Conv_*): the layers take their modules' paths."""
    m, shape = make("resblock")
    path = tmp_path / "folded.onnx"
    export(m, shape, path, 17, keep_batchnorm=False)
    source, weights = import_model(path, model="net")
    assert 'name="block.conv1"' in source and "batchnorm" not in source
    prog = compiled(source, weights)
    x = np.random.default_rng(1).normal(size=(37, *shape)).astype(np.float32)
    with torch.no_grad():
        want = m(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(prog.run("net", x=x)["y"], want, rtol=RTOL, atol=ATOL)


def test_readable_source_and_names(tmp_path):
    m, shape = make("lenet")
    path = tmp_path / "lenet.onnx"
    export(m, shape, path, 17)
    source, weights = import_model(path, model="lenet")
    assert 'conv1 = conv2d(x, 6, 5, padding=2, name="conv1")' in source
    assert re.search(r"= flatten\(h_\d+\)", source)
    state = m.state_dict()
    assert set(weights) == set(state)
    for name, w in weights.items():
        np.testing.assert_array_equal(w, state[name].numpy())


@pytest.mark.parametrize("kind", ["lenet", "resblock"])
def test_fine_tuned_in_dlc_equals_pytorch(kind, tmp_path):
    """Three SGD steps in dlc (the imported program with a train block) and
    in PyTorch (train mode: batchnorm on batch statistics) on the same
    batches give the same weights and outputs."""
    m, shape = make(kind, seed=1)
    path = tmp_path / f"{kind}.onnx"
    export(m, shape, path, 17)
    source, weights = import_model(path, model="net", loss="cross_entropy", optimizer="sgd(lr=0.1, momentum=0.9)")
    prog = compiled(source, weights)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(2)
    m.train()
    for _ in range(3):
        x = rng.normal(size=(16, *shape)).astype(np.float32)
        t = rng.integers(0, 10, 16).astype(np.int32)
        loss = prog.train("fit", x=x, t=t)
        opt.zero_grad()
        want = F.cross_entropy(m(torch.from_numpy(x)), torch.from_numpy(t).long())
        want.backward()
        opt.step()
        assert loss == pytest.approx(want.item(), rel=1e-4)
    state = m.state_dict()
    for name in weights:
        if not name.endswith("num_batches_tracked"):
            np.testing.assert_allclose(prog.params[name], state[name].numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
    m.eval()
    x = rng.normal(size=(37, *shape)).astype(np.float32)
    with torch.no_grad():
        want = m(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(prog.run("net", x=x)["y"], want, rtol=1e-4, atol=1e-5)


class Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return torch.sin(self.fc(x))


def test_unsupported_op_names_node_op_and_shapes(tmp_path):
    path = tmp_path / "sin.onnx"
    export(Unsupported().eval(), (4,), path, 17)
    with pytest.raises(DlcError) as e:
        import_model(path)
    message = str(e.value)
    assert "node '/Sin' (Sin; inputs /fc/Gemm_output_0: ['batch', 4])" in message
    assert "op Sin is not supported; supported ops: Abs, Add, AveragePool, BatchNormalization" in message


def test_cli_import(tmp_path):
    """net.dl and net.safetensors (batchnorm's scalar counter included) load strictly."""
    from dlc.cli import main
    m, shape = make("resblock")
    path = tmp_path / "resblock.onnx"
    export(m, shape, path, 17)
    out = tmp_path / "net.dl"
    assert main(["import", str(path), "-o", str(out), "--loss", "cross_entropy",
                 "--optimizer", "sgd(lr=0.1)"]) == 0
    text = out.read_text()
    assert "model net {" in text and "train fit {" in text and "optimizer = sgd(lr=0.1)" in text
    prog = dlc.compile(str(out))
    prog.load(str(out.with_suffix(".safetensors")))
    x = np.random.default_rng(3).normal(size=(37, *shape)).astype(np.float32)
    with torch.no_grad():
        want = m(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(prog.run("net", x=x)["y"], want, rtol=RTOL, atol=ATOL)


class Generator(nn.Module):
    """A DCGAN-style generator: ConvTranspose, Upsample (Resize) nearest and bilinear."""
    def __init__(self):
        super().__init__()
        self.up1 = nn.ConvTranspose2d(8, 6, 4, stride=2, padding=1)
        self.up2 = nn.ConvTranspose2d(6, 3, 3, padding=1, bias=False)

    def forward(self, z):
        h = F.interpolate(F.relu(self.up1(z)), scale_factor=2, mode="nearest")
        return torch.tanh(F.interpolate(self.up2(h), scale_factor=(2, 3), mode="bilinear"))


@pytest.mark.parametrize("opset", [13, 17])
def test_generator_import_matches_ort(opset, tmp_path):
    torch.manual_seed(0)
    m = Generator().eval()
    path = tmp_path / "gen.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, torch.randn(2, 8, 4, 4), str(path), dynamo=False, opset_version=opset,
                          input_names=["z"], output_names=["y"],
                          dynamic_axes={"z": {0: "batch"}, "y": {0: "batch"}})
    source, weights = import_model(path, model="net")
    assert 'conv_transpose2d(z, 6, 4, stride=2, padding=1, name="up1")' in source
    assert 'upsample(' in source and 'mode="bilinear"' in source
    prog = compiled(source, weights)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch in (1, 37):
        z = rng.normal(size=(batch, 8, 4, 4)).astype(np.float32)
        np.testing.assert_allclose(prog.run("net", z=z)["y"], session.run(None, {"z": z})[0], rtol=RTOL, atol=ATOL)


class SeqClassifier(nn.Module):
    """Embedding, a (bidirectional) LSTM or GRU, the last step's states."""
    def __init__(self, cell, bidirectional):
        super().__init__()
        self.embed = nn.Embedding(24, 16)
        self.rnn = getattr(nn, cell)(16, 12, batch_first=True, bidirectional=bidirectional)
        self.out = nn.Linear(24 if bidirectional else 12, 2)

    def forward(self, tokens):
        h, _ = self.rnn(self.embed(tokens))
        return self.out(h[:, -1])


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("cell,bidirectional", [("LSTM", True), ("LSTM", False), ("GRU", False), ("RNN", True)])
def test_recurrent_import_matches_ort(cell, bidirectional, opset, tmp_path):
    """ONNX's time-major recurrent node and its gate order (LSTM iofc, GRU
    zrh) become dlc's batch-first layer with PyTorch's (ifgo, rzn); dynamic
    batch and time axes become `batch` and `time`."""
    torch.manual_seed(0)
    m = SeqClassifier(cell, bidirectional).eval()
    path = tmp_path / "seq.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, torch.randint(0, 24, (2, 5)), str(path), dynamo=False, opset_version=opset,
                          input_names=["tokens"], output_names=["y"],
                          dynamic_axes={"tokens": {0: "batch", 1: "time"}, "y": {0: "batch"}})
    source, weights = import_model(path, model="net")
    assert "input tokens: i32[batch, time]" in source and f'{cell.lower()}(embed, 12, name="rnn"' in source
    state = m.state_dict()   # PyTorch's names (weight_ih_l0 -> rnn.weight_ih) and gate order
    for name, w in weights.items():
        np.testing.assert_array_equal(w, state[name.replace("_reverse", "_l0_reverse") if "reverse" in name
                                            else name + ("_l0" if name.startswith("rnn.") else "")].numpy())
    prog = compiled(source, weights)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch, time in ((1, 5), (37, 9)):
        tokens = rng.integers(0, 24, (batch, time))
        want = session.run(None, {"tokens": tokens})[0]
        got = prog.run("net", tokens=tokens.astype(np.int32))["y"]
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=f"batch {batch}")


ROUND_TRIPS = [(EXAMPLE_DIR / f"{e}.dl", m) for e, ms in EXAMPLES.items() for m in ms] + \
    [(RECURRENT, "rec"), (IMAGES, "m")]


@pytest.mark.parametrize("source,model", ROUND_TRIPS, ids=[m for _, m in ROUND_TRIPS])
def test_dlc_onnx_dlc_round_trip(source, model, tmp_path):
    """A dlc model exported and imported back computes the same: every
    example model, and (as in tests/onnx/test_export.py) a bidirectional
    LSTM with lengths and initial states, a GRU and a relu RNN, and
    transposed convolutions with upsampling."""
    prog = perturbed(dlc.compile(source), seed=3)
    export_model(prog, model, tmp_path / "m.onnx")
    text, weights = import_model(tmp_path / "m.onnx", model=model)
    back = compiled(text, weights)
    for name, w in weights.items():
        np.testing.assert_array_equal(w, prog.params[name])
    feeds = random_inputs(prog.graph.functions[model], 37, np.random.default_rng(0))
    want, got = prog.run(model, **feeds), back.run(model, **feeds)
    assert list(got) == list(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=RTOL, atol=ATOL, err_msg=k)


class ResNetBlock(nn.Module):
    """torchvision's BasicBlock, with its 1x1 downsampling Sequential."""
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + identity)


class ResNet18(nn.Module):
    """torchvision.models.resnet18's layers and names, built here (no torchvision)."""
    def __init__(self, classes=1000):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, c in enumerate([64, 128, 256, 512]):
            blocks = [ResNetBlock(cin, c, 1 if i == 0 else 2), ResNetBlock(c, c, 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = c
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(512, classes)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@pytest.mark.parametrize("keep_batchnorm", [True, False])
def test_resnet18_imports_and_runs(keep_batchnorm, tmp_path):
    torch.manual_seed(0)
    m = ResNet18().eval()
    path = tmp_path / "resnet18.onnx"
    export(m, (3, 64, 64), path, 17, keep_batchnorm)
    source, weights = import_model(path, model="resnet18")
    if keep_batchnorm:   # every weight under its torchvision name
        assert set(weights) - {n for n in weights if n.endswith("num_batches_tracked")} == \
            {n for n in m.state_dict() if not n.endswith("num_batches_tracked")}
    assert 'name="layer2.0.downsample.0"' in source
    prog = compiled(source, weights)
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(prog.run("resnet18", x=x)["y"], want, rtol=RTOL, atol=ATOL)


def test_unreadable_file_is_an_error(tmp_path):
    from dlc.cli import main
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(DlcError, match="cannot read ONNX model '.*bad.onnx'"):
        import_model(bad)
    assert main(["import", str(bad), "-o", str(tmp_path / "net.dl")]) == 1
