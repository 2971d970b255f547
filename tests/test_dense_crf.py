"""The permutohedral lattice ops and the dense CRF, against independent references: a plain-Python lattice
(segops.reference.permutohedral_lattice_brute_force), the exact O(N^2) Gaussian filter and mean field, and
autograd's numerical derivatives."""

import pytest
import torch
import torch.nn.functional as F

import segops
from segops import reference
from segops.ops.dense_crf import DenseCRFFunction, PermutohedralLattice, crf_lattices, crf_softmax
from conftest import requires_cuda
from op_testing import assert_cuda_path_does_not_synchronise, assert_raises_eager_and_fake


def random_features(seed, batch=1, points=60, dims=3, spread=4.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, points, dims, generator=g, dtype=dtype) * spread


def crf_case(seed, batch=2, labels=4, height=18, width=22, dtype=torch.float64):
    """Smooth random logits (a coarse map upsampled, plus noise) and an image of colour blocks plus noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, labels, 3, 4, generator=g, dtype=dtype) * 2
    unary = F.interpolate(coarse, size=(height, width), mode="bilinear") + torch.randn(
        batch, labels, height, width, generator=g, dtype=dtype
    )
    blocks = F.interpolate(torch.rand(batch, 3, 3, 3, generator=g, dtype=dtype), size=(height, width), mode="nearest")
    image = (blocks * 255 + torch.randn(batch, 3, height, width, generator=g, dtype=dtype) * 5).clamp(0, 255)
    return unary, image


SMALL_CRF = dict(
    smoothness_sxy=3.0, smoothness_weight=3.0, appearance_sxy=8.0, appearance_srgb=13.0, appearance_weight=5.0
)


def image_features(height, width, sxy, colour=None, srgb=None):
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    position = torch.stack([xs, ys], -1).view(1, -1, 2) / sxy
    if colour is None:
        return position.contiguous()
    return torch.cat([position, colour.permute(1, 2, 0).reshape(1, -1, 3) / srgb], -1).contiguous()


# ------------------------------------------------------------------------------------------------ the lattice


@pytest.mark.parametrize("dims", [1, 2, 3, 5, 7])
@pytest.mark.parametrize("seed", [0, 1])
def test_lattice_equals_plain_python_lattice(dims, seed):
    features = random_features(seed, batch=2, points=50, dims=dims)
    lattice = PermutohedralLattice.build(features)
    for b in range(2):
        vertex_ids, weights, neighbours = reference.permutohedral_lattice_brute_force(features[b])
        vertices = neighbours.shape[0]
        assert lattice.num_vertices[b].item() == vertices
        assert torch.equal(lattice.vertex_ids[b], vertex_ids)
        torch.testing.assert_close(lattice.weights[b], weights, rtol=0, atol=1e-12)
        assert torch.equal(lattice.neighbours[b, :vertices], neighbours)
        assert (lattice.neighbours[b, vertices:] == -1).all()
        # The splat lists: each vertex's entries, in entry order.
        offsets, entries = lattice.splat_offsets[b], lattice.splat_entries[b]
        flat_ids = vertex_ids.flatten()
        for v in range(vertices):
            expected = torch.nonzero(flat_ids == v).flatten().to(torch.int32)
            assert torch.equal(entries[offsets[v] : offsets[v + 1]], expected)
    torch.testing.assert_close(lattice.weights.sum(-1), torch.ones(2, 50, dtype=torch.float64))


def test_splat_lists_are_a_stable_sort_of_the_entries_by_vertex():
    # Large enough for the parallel counting sort's several chunks (at least 2^16 entries each), with images of
    # different vertex counts (the shorter one's rows past its vertices are empty lists).
    features = torch.cat([random_features(20, points=120_000, dims=2, spread=300.0), torch.zeros(1, 120_000, 2)])
    lattice = PermutohedralLattice.build(features.float())
    for b in range(2):
        ids = lattice.vertex_ids[b].flatten().long()
        vertices = int(lattice.num_vertices[b])
        expected_entries = torch.sort(ids, stable=True).indices.to(torch.int32)
        rows = lattice.splat_offsets.shape[1] - 1
        counts = torch.bincount(ids, minlength=rows)
        expected_offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]).to(torch.int32)
        assert torch.equal(lattice.splat_entries[b], expected_entries)
        assert torch.equal(lattice.splat_offsets[b], expected_offsets)
        assert vertices == int((counts > 0).sum()) and (counts[vertices:] == 0).all()
    assert int(lattice.num_vertices[1]) < int(lattice.num_vertices[0])


@pytest.mark.parametrize("case", ["smoothness", "appearance"])
def test_normalised_filter_approximates_exact_gaussian(case):
    """The lattice's normalised filter against the exact normalised Gaussian filter: the relative error the
    approximation makes, reported and bounded."""
    g = torch.Generator().manual_seed(0)
    height, width = 16, 20
    if case == "smoothness":
        features, bound = image_features(height, width, 3.0), 0.03
    else:
        colour = torch.rand(3, height, width, generator=g, dtype=torch.float64) * 255
        features, bound = image_features(height, width, 10.0, colour, 60.0), 0.06
    values = torch.rand(1, height * width, 4, generator=g, dtype=torch.float64)
    lattice = PermutohedralLattice.build(features).normalized()
    exact = reference.gaussian_filter_brute_force(features, values)
    error = ((lattice.filter(values) - exact).norm() / exact.norm()).item()
    print(f"{case}: relative L2 error of the lattice filter vs the exact Gaussian: {error:.4f}")
    assert error < bound


@pytest.mark.parametrize("dims", [2, 5])
def test_adjoint_is_the_transpose(dims):
    features = random_features(3, batch=2, points=80, dims=dims)
    lattice = PermutohedralLattice.build(features).normalized()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 80, 3, generator=g, dtype=torch.float64)
    y = torch.randn(2, 80, 3, generator=g, dtype=torch.float64)
    lhs = (lattice.filter(x) * y).sum()
    rhs = (x * lattice.filter_adjoint(y)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)
    # The filter is not symmetric: the adjoint differs from the filter itself.
    assert not torch.allclose(lattice.filter(x), lattice.filter_adjoint(x))


def test_filter_gradcheck_uses_the_adjoint():
    lattice = PermutohedralLattice.build(random_features(4, points=30, dims=3))
    values = torch.randn(1, 30, 2, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda v: lattice.filter(v), (values,))
    torch.autograd.gradcheck(lambda v: lattice.filter_adjoint(v), (values,))
    torch.autograd.gradgradcheck(lambda v: lattice.filter(v), (values,))


def test_filter_float32_matches_float64():
    features = random_features(5, batch=2, points=200, dims=5, spread=6.0)
    values = torch.rand(2, 200, 21, dtype=torch.float64)
    lattice64 = PermutohedralLattice.build(features)
    lattice32 = PermutohedralLattice.build(features.float())
    assert torch.equal(lattice32.vertex_ids, lattice64.vertex_ids)
    torch.testing.assert_close(lattice32.filter(values.float()), lattice64.filter(values).float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3, 8, 21, 40])
def test_cpu_results_do_not_depend_on_thread_count(channels):
    features = random_features(6, batch=2, points=3000, dims=5, spread=20.0, dtype=torch.float32)
    values = torch.rand(2, 3000, channels)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            lattice = PermutohedralLattice.build(features)
            results.append((*lattice, lattice.filter(values), lattice.filter_adjoint(values)))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_dense_crf_does_not_depend_on_thread_count():
    # 90x100 points at 21 labels: the steps and the softmax run in 12 chunks of 4 blocks, taken by whichever thread
    # comes free; the lattice build numbers 2 chunks of points.
    unary, image = crf_case(12, batch=1, labels=21, height=90, width=100, dtype=torch.float32)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            results.append(segops.dense_crf(unary, image, 3))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert torch.equal(results[0], other)


def test_batch_equals_single_images():
    features = random_features(7, batch=3, points=100, dims=5, spread=8.0)
    values = torch.rand(3, 100, 5, dtype=torch.float64)
    batched = PermutohedralLattice.build(features)
    out = batched.filter(values)
    for b in range(3):
        single = PermutohedralLattice.build(features[b : b + 1])
        assert torch.equal(single.filter(values[b : b + 1]), out[b : b + 1])
        vertices = single.num_vertices.item()
        assert torch.equal(single.neighbours[0, :vertices], batched.neighbours[b, :vertices])


def test_empty_inputs():
    lattice = PermutohedralLattice.build(torch.zeros(2, 0, 3))
    assert lattice.num_vertices.tolist() == [0, 0] and lattice.neighbours.shape == (2, 0, 4, 2)
    assert lattice.filter(torch.zeros(2, 0, 5)).shape == (2, 0, 5)
    assert PermutohedralLattice.build(torch.zeros(0, 7, 3)).filter(torch.zeros(0, 7, 2)).shape == (0, 7, 2)
    full = PermutohedralLattice.build(random_features(0, points=10))
    assert full.filter(torch.zeros(1, 10, 0, dtype=torch.float64)).shape == (1, 10, 0)


def test_opcheck():
    features = random_features(8, batch=2, points=40, dims=3, dtype=torch.float32)
    torch.library.opcheck(torch.ops.segops.permutohedral_lattice.default, (features,))
    lattice = PermutohedralLattice.build(features)
    values = torch.rand(2, 40, 3, requires_grad=True)
    for adjoint in (False, True):
        torch.library.opcheck(torch.ops.segops.permutohedral_filter.default, (values, *lattice, adjoint))


def test_compile_fullgraph_matches_eager():
    features = random_features(9, batch=2, points=50, dims=5, dtype=torch.float32)
    values = torch.rand(2, 50, 4)

    def build_and_filter(f, v):
        lattice = PermutohedralLattice.build(f).normalized()
        return lattice.filter(v) + lattice.filter_adjoint(v)

    torch.testing.assert_close(
        torch.compile(build_and_filter, fullgraph=True)(features, values), build_and_filter(features, values)
    )


# ------------------------------------------------------------------------------------- the fused softmax


@pytest.mark.parametrize(
    "dtype, tolerance", [(torch.float32, dict(rtol=1e-6, atol=1e-7)), (torch.float64, dict(rtol=1e-13, atol=1e-15))]
)
@pytest.mark.parametrize("labels", [1, 2, 5, 21, 40])
@pytest.mark.parametrize("kernels", [0, 1, 2])
def test_crf_softmax_equals_pytorch(dtype, tolerance, labels, kernels):
    g = torch.Generator().manual_seed(labels + 10 * kernels)
    unary = torch.randn(2, 300, labels, generator=g, dtype=dtype) * 30  # wide logits: exp far below 1 too
    messages = [torch.randn(2, 300, labels, generator=g, dtype=dtype) for _ in range(kernels)]
    weights = torch.rand(kernels, generator=g, dtype=dtype) * 10
    expected = unary.clone()
    for k in range(kernels):
        expected = expected + weights[k] * messages[k]
    expected = torch.softmax(expected, -1)
    torch.testing.assert_close(crf_softmax(unary, messages, weights), expected, **tolerance)


def test_crf_softmax_gradients():
    g = torch.Generator().manual_seed(0)
    unary = torch.randn(1, 7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    messages = [torch.randn(1, 7, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    weights = torch.rand(2, generator=g, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda u, a, b, w: crf_softmax(u, [a, b], w), (unary, *messages, weights))
    torch.autograd.gradgradcheck(lambda u, a, b, w: crf_softmax(u, [a, b], w), (unary, *messages, weights))
    torch.library.opcheck(torch.ops.segops.dense_crf_softmax.default, (unary, messages, weights))


def test_crf_softmax_errors():
    op = torch.ops.segops.dense_crf_softmax
    unary = torch.zeros(2, 3, 4)
    cases = [
        (dict(unary=torch.zeros(3, 4)), r"unary must be \[B, N, L\] with L >= 1, got shape \[3, 4\]"),
        (
            dict(unary=unary.half(), messages=[], weights=torch.zeros(0, dtype=torch.half)),
            "unary must be float32 or float64",
        ),
        (dict(messages=[torch.zeros(2, 3, 5)]), r"messages must have unary's shape \[2, 3, 4\] and dtype Float"),
        (dict(messages=[unary] * 9, weights=torch.zeros(9)), "at most 8 messages, got 9"),
        (dict(weights=torch.zeros(2)), r"weights must be \[K\] = \[1\] \(one per message\)"),
    ]
    for change, message in cases:
        args = {"unary": unary, "messages": [unary], "weights": torch.zeros(1), **change}
        assert_raises_eager_and_fake(op, args, message)


# ---------------------------------------------------------------------------------------- the fused step


def _step_lists(lattices):
    """_dense_crf_step's lattice arguments: one list per lattice field."""
    return [list(tensors) for tensors in zip(*lattices)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("labels", [1, 2, 3, 5, 21])
@pytest.mark.parametrize("kernels", [1, 2, 3])
def test_fused_step_equals_the_filters_then_the_softmax(dtype, labels, kernels):
    # Bitwise: the same slices and the same softmax, only without the messages in memory. 3 kernels: the two CRF
    # lattices and a 1-D one (d = 1 takes the general d path). Two images; 600 points end blocks part-full.
    unary, image = crf_case(labels + 7 * kernels, batch=2, labels=labels, height=20, width=30, dtype=dtype)
    lattices = list(crf_lattices(image, 3.0, 8.0, 13.0))
    if kernels == 3:
        lattices.append(PermutohedralLattice.build(image[:, :1].flatten(2).transpose(1, 2) / 20).normalized())
    lattices = [lattice._replace(weights=lattice.weights.to(dtype)) for lattice in lattices[:kernels]]
    g = torch.Generator().manual_seed(labels)
    logits = unary.permute(0, 2, 3, 1).reshape(2, -1, labels)
    q = torch.softmax(torch.randn(logits.shape, generator=g, dtype=dtype), -1)
    weights = torch.rand(kernels, generator=g, dtype=dtype) * 10
    expected = crf_softmax(logits, [lattice.filter(q) for lattice in lattices], weights)
    actual = torch.ops.segops._dense_crf_step(logits, q, weights, *_step_lists(lattices))
    assert torch.equal(actual, expected)
    labels_first = torch.ops.segops._dense_crf_step(logits, q, weights, *_step_lists(lattices), labels_first=True)
    assert labels_first.shape == (2, labels, 600) and torch.equal(labels_first, expected.transpose(1, 2))


def test_inference_runs_the_fused_step_with_the_autograd_path_bits(monkeypatch):
    # Without a gradient dense_crf runs _dense_crf_step; with one, DenseCRFFunction: the same numbers either way.
    unary, image = crf_case(11, labels=5, dtype=torch.float32)
    calls = []
    fused = torch.ops.segops._dense_crf_step
    monkeypatch.setattr(
        torch.ops.segops, "_dense_crf_step", lambda *args: calls.append(1) or fused(*args), raising=False
    )
    inference = segops.dense_crf(unary, image, 3, **SMALL_CRF)
    assert len(calls) == 2 * 3  # two images, 3 steps each
    differentiable = segops.dense_crf(unary.clone().requires_grad_(), image, 3, **SMALL_CRF)
    assert len(calls) == 6 and differentiable.requires_grad
    assert torch.equal(inference, differentiable.detach())
    with torch.no_grad():
        assert torch.equal(segops.dense_crf(unary.clone().requires_grad_(), image, 3, **SMALL_CRF), inference)
    assert len(calls) == 12


def test_fused_step_opcheck_vmap_and_no_derivative():
    unary, image = crf_case(12, batch=1, labels=3, height=6, width=7)
    lattices = crf_lattices(image, 3.0, 8.0, 13.0)
    logits = unary.permute(0, 2, 3, 1).reshape(1, -1, 3).contiguous()
    q = torch.softmax(logits, -1)
    args = (logits, q, torch.tensor([3.0, 5.0], dtype=torch.float64), *_step_lists(lattices))
    for labels_first in (False, True):
        torch.library.opcheck(
            torch.ops.segops._dense_crf_step.default,
            args,
            dict(labels_first=labels_first),
            test_utils=("test_schema", "test_faketensor"),
        )
    batched = torch.stack([logits, logits.flip(1)])
    expected = torch.stack([torch.ops.segops._dense_crf_step(u, *args[1:]) for u in batched])
    assert torch.equal(torch.vmap(lambda u: torch.ops.segops._dense_crf_step(u, *args[1:]))(batched), expected)
    # It has no derivative: a call that wants one is an error naming it, never a silent zero gradient.
    for wanting in (
        (logits.clone().requires_grad_(), *args[1:]),
        (*args[:2], args[2].clone().requires_grad_(), *args[3:]),
    ):
        with pytest.raises(RuntimeError, match="segops::_dense_crf_step has no derivative"):
            torch.ops.segops._dense_crf_step(*wanting)
    with torch.no_grad():
        torch.ops.segops._dense_crf_step(logits.clone().requires_grad_(), *args[1:])


def test_fused_step_errors():
    values, lattice = lattice_args()
    op = torch.ops.segops._dense_crf_step
    lists = dict(zip(PermutohedralLattice._fields, _step_lists([lattice])))
    base = dict(unary=values, q=values, kernel_weights=torch.ones(1), **lists)
    cases = [
        (dict(vertex_ids=[]), "1 to 8 lattices, got 0"),
        (
            dict(weights=lists["weights"] * 2),
            "one tensor per lattice in every lattice list, got 1 vertex_ids, 2 weights",
        ),
        (dict(unary=values[0]), r"unary must be \[B, N, L\] with L >= 1, got shape \[20, 2\]"),
        (dict(unary=values.half(), q=values.half()), "unary must be float32 or float64, got Half"),
        (dict(q=values[:, :, :1]), r"q must have unary's shape \[2, 20, 2\] and dtype Float, got \[2, 20, 1\] Float"),
        (dict(kernel_weights=torch.ones(2)), r"kernel_weights must be \[K\] = \[1\] \(one per lattice\)"),
        (dict(vertex_ids=[lattice.vertex_ids.long()]), "permutohedral_filter: vertex_ids must be Int, got Long"),
    ]
    for change, message in cases:
        assert_raises_eager_and_fake(op, {**base, **change}, message)
    # A forged lattice: the slice reports the point, as the filter does.
    forged = lattice.vertex_ids.clone()
    forged[1, 3, 2] = 10**6
    with pytest.raises(RuntimeError, match=r"vertex_ids\[1, 3\] must be vertices in \[0, num_vertices\)"):
        op(**{**base, "vertex_ids": [forged]})


# ------------------------------------------------------------------------------------------- the dense CRF


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mean_field_agrees_with_exact_mean_field(seed):
    unary, image = crf_case(seed)
    ours = segops.dense_crf(unary, image, 5, **SMALL_CRF)
    exact = reference.dense_crf_brute_force(unary, image, 5, **SMALL_CRF)
    agreement = (ours.argmax(1) == exact.argmax(1)).double().mean().item()
    changed = (unary.argmax(1) != exact.argmax(1)).double().mean().item()
    mean_error = (ours - exact).abs().mean().item()
    print(
        f"labels agreeing with exact mean field: {agreement:.4f} (the CRF changed {changed:.2f} of them); "
        f"mean |p - p_exact| {mean_error:.4f}"
    )
    assert changed > 0.2  # the CRF does real work here
    assert agreement >= 0.97
    assert mean_error < 0.01
    torch.testing.assert_close(ours.sum(1), torch.ones_like(ours[:, 0]))


def test_learned_compatibility_agrees_with_exact_mean_field():
    unary, image = crf_case(3, labels=3)
    g = torch.Generator().manual_seed(0)
    compatibility = torch.rand(3, 3, generator=g, dtype=torch.float64) * 2
    ours = segops.dense_crf(unary, image, 3, compatibility=compatibility, **SMALL_CRF)
    exact = reference.dense_crf_brute_force(unary, image, 3, compatibility=compatibility, **SMALL_CRF)
    assert (ours.argmax(1) == exact.argmax(1)).double().mean() >= 0.97
    # Potts as a matrix (1 - I) is the default Potts model.
    potts = segops.dense_crf(unary, image, 3, compatibility=1 - torch.eye(3, dtype=torch.float64), **SMALL_CRF)
    torch.testing.assert_close(potts, segops.dense_crf(unary, image, 3, **SMALL_CRF))


def test_zero_iterations_is_softmax_and_uint8_equals_float_image():
    unary, image = crf_case(4, dtype=torch.float32)
    torch.testing.assert_close(segops.dense_crf(unary, image, 0), torch.softmax(unary, 1))
    rounded = image.round()
    assert torch.equal(segops.dense_crf(unary, rounded.to(torch.uint8), 2), segops.dense_crf(unary, rounded, 2))


def test_batch_of_images_equals_each_image():
    """The whole-batch path (CUDA's and compiled graphs'; the CPU's dense_crf runs images one at a time) against
    single images."""
    from segops.ops.dense_crf import _mean_field

    unary, image = crf_case(5, batch=3, dtype=torch.float32)
    batched = _mean_field(unary, image, 3, (3.0, 80.0, 13.0), torch.tensor([3.0, 10.0]), None)
    for b in range(3):
        assert torch.equal(segops.dense_crf(unary[b : b + 1], image[b : b + 1], 3), batched[b : b + 1])
    assert torch.equal(segops.dense_crf(unary, image, 3), batched)


@pytest.mark.parametrize("potts", [True, False])
def test_step_gradcheck(potts):
    unary, image = crf_case(6, batch=1, labels=3, height=6, width=7)
    lattices = crf_lattices(image, 3.0, 8.0, 13.0)
    g = torch.Generator().manual_seed(1)
    logits = unary.permute(0, 2, 3, 1).reshape(1, -1, 3).clone().requires_grad_()
    q = torch.softmax(torch.randn(1, 42, 3, generator=g, dtype=torch.float64), -1).requires_grad_()
    weights = torch.tensor([3.0, 5.0], dtype=torch.float64, requires_grad=True)
    compatibility = None if potts else torch.rand(3, 3, generator=g, dtype=torch.float64).requires_grad_()
    inputs = (logits, q, weights) + (() if potts else (compatibility,))

    def step(*args):
        return DenseCRFFunction.apply(args[0], args[1], args[2], None if potts else args[3], lattices)

    torch.autograd.gradcheck(step, inputs)


def test_dense_crf_two_iterations_gradcheck():
    unary, image = crf_case(7, batch=2, labels=3, height=5, width=6)
    unary.requires_grad_()
    g = torch.Generator().manual_seed(2)
    weights = torch.tensor([3.0, 5.0], dtype=torch.float64, requires_grad=True)
    compatibility = torch.rand(3, 3, generator=g, dtype=torch.float64).requires_grad_()

    def run(u, w, mu):
        return segops.dense_crf(
            u,
            image,
            2,
            smoothness_sxy=3.0,
            smoothness_weight=w[0],
            appearance_sxy=8.0,
            appearance_srgb=13.0,
            appearance_weight=w[1],
            compatibility=mu,
        )

    torch.autograd.gradcheck(run, (unary, weights, compatibility))


@pytest.mark.parametrize("batch", [1, 2])
def test_dense_crf_compiles_fullgraph(batch):
    unary, image = crf_case(10, batch=batch, labels=3, dtype=torch.float32)
    compiled = torch.compile(lambda u, i: segops.dense_crf(u, i, 2, **SMALL_CRF), fullgraph=True)
    eager_unary, compiled_unary = unary.clone().requires_grad_(), unary.clone().requires_grad_()
    expected = segops.dense_crf(eager_unary, image, 2, **SMALL_CRF)
    actual = compiled(compiled_unary, image)
    torch.testing.assert_close(actual, expected)
    weights = torch.rand(expected.shape, generator=torch.Generator().manual_seed(0))
    (expected * weights).sum().backward()
    (actual * weights).sum().backward()
    torch.testing.assert_close(compiled_unary.grad, eager_unary.grad)


def test_step_is_not_twice_differentiable():
    unary, image = crf_case(8, batch=1, labels=2, height=4, width=4)
    unary.requires_grad_()
    out = segops.dense_crf(unary, image, 1)
    with pytest.raises(RuntimeError, match=r"differentiable once: its backward cannot build a graph"):
        torch.autograd.grad(out[:, 0].sum(), unary, create_graph=True)


def test_module_learns_weights_and_compatibility():
    unary, image = crf_case(9, batch=2, labels=3, dtype=torch.float32)
    crf = segops.DenseCRF(3, num_iters=2, appearance_sxy=8.0)
    assert "num_labels=3" in repr(crf) and "learned" in repr(crf)
    out = crf(unary, image)
    torch.testing.assert_close(
        out, segops.dense_crf(unary, image, 2, appearance_sxy=8.0, compatibility=1 - torch.eye(3))
    )
    target = torch.randint(0, 3, (2, 18, 22))
    loss = F.nll_loss(out.clamp_min(1e-8).log(), target)
    loss.backward()
    assert crf.kernel_weights.grad.abs().sum() > 0 and crf.compatibility.grad.abs().sum() > 0
    deeplab = segops.DenseCRF.deeplab(21)
    assert deeplab.num_iters == 10 and deeplab.compatibility is None
    assert deeplab.kernel_weights.tolist() == [3.0, 4.0]


# ------------------------------------------------------------------------------------------------ bad input


def lattice_args(points=20, dims=3, channels=2):
    features = random_features(10, batch=2, points=points, dims=dims, dtype=torch.float32)
    return torch.rand(2, points, channels), PermutohedralLattice.build(features)


@pytest.mark.parametrize(
    "features, message",
    [
        (torch.zeros(5, 3), r"features must be \[B, N, d\], got shape \[5, 3\]"),
        (torch.zeros(1, 5, 3, dtype=torch.float16), "features must be float32 or float64, got Half"),
        (torch.zeros(1, 5, 17), r"features must have 1 to 16 features per point \(d\), got 17"),
        (torch.zeros(1, 5, 0), r"features must have 1 to 16 features per point \(d\), got 0"),
    ],
)
def test_bad_features(features, message):
    assert_raises_eager_and_fake(torch.ops.segops.permutohedral_lattice, {"features": features}, message)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e9])
@pytest.mark.parametrize("dims", [2, 3, 5])  # 2 and 5: the CPU embeds 8 points at a time in vectors
def test_bad_feature_values(bad, dims):
    features = torch.rand(2, 30, dims)
    # In image 1, the first bad point is named: point 12 (the second group of 8), not the later 27.
    features[1, 12, 1] = bad
    features[1, 27, 0] = bad
    with pytest.raises(
        RuntimeError,
        match=r"features must be finite and at most 2\^24 in lattice units.*"
        r"features\[1, 12, 1\]",
    ):
        PermutohedralLattice.build(features)


def test_lattice_has_no_derivative_and_the_crf_image_none():
    # Features that want a gradient: an error naming the op, not a lattice whose weights' gradient is silently lost.
    features = random_features(12, dtype=torch.float32).requires_grad_()
    with pytest.raises(RuntimeError, match="segops::permutohedral_lattice has no derivative"):
        PermutohedralLattice.build(features)
    assert not PermutohedralLattice.build(features.detach()).weights.requires_grad
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        assert not PermutohedralLattice.build(features.detach()).weights.requires_grad  # no tangent: runs
        with pytest.raises(RuntimeError, match="segops::permutohedral_lattice has no derivative"):
            PermutohedralLattice.build(fwAD.make_dual(features.detach(), torch.ones_like(features)))
    # dense_crf differentiates the logits, and not the image (documented): an image that wants a gradient gets none.
    unary, image = crf_case(13, batch=1, labels=3, height=6, width=7)
    unary.requires_grad_()
    image.requires_grad_()
    segops.dense_crf(unary, image, 2, **SMALL_CRF).sum().backward()
    assert unary.grad is not None and image.grad is None


def test_bad_filter_arguments():
    values, lattice = lattice_args()
    op = torch.ops.segops.permutohedral_filter
    base = dict(zip(["values", *PermutohedralLattice._fields], [values, *lattice]))
    cases = [
        (dict(values=values[0]), r"values must be \[B, N, C\], got shape \[20, 2\]"),
        (dict(values=values.double()), r"weights must be Double, got Float"),
        (dict(values=values[:, :10]), r"vertex_ids must have shape \[B, N, d\+1\] = \[2, 10, 4\], got \[2, 20, 4\]"),
        (dict(vertex_ids=lattice.vertex_ids.long()), "vertex_ids must be Int, got Long"),
        (dict(neighbours=lattice.neighbours[:, :, :3]), r"neighbours must have shape \[B, M, d\+1, 2\] = .*, got"),
        (dict(splat_offsets=lattice.splat_offsets[:, 1:]), r"splat_offsets must have shape \[B, M\+1\]"),
        (dict(splat_entries=lattice.splat_entries[:, 1:]), r"splat_entries must have shape \[B, N\*\(d\+1\)\]"),
        (dict(num_vertices=lattice.num_vertices.int()), "num_vertices must be Long, got Int"),
    ]
    for change, message in cases:
        assert_raises_eager_and_fake(op, {**base, **change}, message)


@pytest.mark.parametrize(
    "field, index, value, message",
    [
        ("vertex_ids", (1, 3, 2), 10**6, r"vertex_ids\[1, 3\] must be vertices in \[0, num_vertices\)"),
        ("vertex_ids", (0, 0, 0), -1, r"vertex_ids\[0, 0\] must be vertices in \[0, num_vertices\)"),
        ("neighbours", (0, 1, 2, 0), 10**6, r"neighbours\[0, 1, 2\] must be vertices in \[-1, num_vertices\)"),
        ("splat_entries", (1, 0), 10**6, r"the splat list of vertex 0 of image 1 is outside splat_entries"),
        ("splat_offsets", (0, 1), -5, r"the splat list of vertex 0 of image 0 is outside splat_entries"),
        ("num_vertices", (0,), 10**6, r"num_vertices\[0\] must be in \[0, M\]"),
    ],
)
def test_forged_lattice_is_an_error_not_a_crash(field, index, value, message):
    values, lattice = lattice_args()
    forged = lattice._replace(**{field: getattr(lattice, field).clone()})
    getattr(forged, field)[index] = value
    with pytest.raises(RuntimeError, match=message):
        forged.filter(values)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            dict(unary=torch.zeros(2, 1, 5, 6)),
            r"unary must be \[N, L, H, W\] with L >= 2 labels, got shape \[2, 1, 5, 6\]",
        ),
        (dict(unary=torch.zeros(2, 3, 5)), r"unary must be \[N, L, H, W\] with L >= 2 labels, got shape \[2, 3, 5\]"),
        (dict(unary=torch.zeros(2, 3, 5, 6, dtype=torch.float16)), "unary must be float32 or float64, got Half"),
        (
            dict(image=torch.zeros(2, 4, 5, 6)),
            r"image must be \[N, 3, H, W\] = \[2, 3, 5, 6\] .*got shape \[2, 4, 5, 6\]",
        ),
        (dict(image=torch.zeros(2, 3, 5, 7)), r"image must be \[N, 3, H, W\] = \[2, 3, 5, 6\]"),
        (dict(image=torch.zeros(1, 3, 5, 6)), r"image must be \[N, 3, H, W\] = \[2, 3, 5, 6\]"),
        (dict(image=torch.zeros(2, 3, 5, 6, dtype=torch.int32)), "image must be uint8, float32 or float64"),
        (dict(num_iters=-1), "num_iters must be an int >= 0, got -1"),
        (dict(smoothness_sxy=0.0), "smoothness_sxy must be a finite number > 0, got 0.0"),
        (dict(appearance_sxy=-3.0), "appearance_sxy must be a finite number > 0, got -3.0"),
        (dict(appearance_srgb=float("nan")), "appearance_srgb must be a finite number > 0, got nan"),
        (dict(compatibility=torch.zeros(2, 2)), r"compatibility must be \[L, L\] = \[3, 3\]"),
    ],
)
def test_bad_crf_arguments(change, message):
    args = dict(unary=torch.zeros(2, 3, 5, 6), image=torch.zeros(2, 3, 5, 6), num_iters=2)
    with pytest.raises(ValueError, match=message):
        segops.dense_crf(**{**args, **change})


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_unary(bad):
    unary = torch.zeros(1, 3, 4, 5)
    unary[0, 1, 2, 3] = bad
    with pytest.raises(ValueError, match="unary must be finite"):
        segops.dense_crf(unary, torch.zeros(1, 3, 4, 5))


def test_module_rejects_bad_labels():
    with pytest.raises(ValueError, match="num_labels must be an int >= 2, got 1"):
        segops.DenseCRF(1)


# ------------------------------------------------------------------------------------------------------- CUDA


@requires_cuda
@pytest.mark.cuda
def test_cuda_lattice_and_filter_equal_cpu():
    features = random_features(11, batch=2, points=5000, dims=5, spread=20.0, dtype=torch.float32)
    values = torch.rand(2, 5000, 21)
    cpu = PermutohedralLattice.build(features)
    gpu = PermutohedralLattice.build(features.cuda())
    rows = cpu.neighbours.shape[1]
    assert torch.equal(gpu.num_vertices.cpu(), cpu.num_vertices)
    assert torch.equal(gpu.vertex_ids.cpu(), cpu.vertex_ids)
    assert torch.equal(gpu.neighbours[:, :rows].cpu(), cpu.neighbours)
    assert torch.equal(gpu.splat_entries.cpu(), cpu.splat_entries)
    for adjoint in (False, True):
        expected = torch.ops.segops.permutohedral_filter(values, *cpu, adjoint)
        actual = torch.ops.segops.permutohedral_filter(values.cuda(), *gpu, adjoint)
        torch.testing.assert_close(actual.cpu(), expected, rtol=1e-5, atol=1e-6)
        # A CPU lattice moved to the GPU filters the same.
        moved = PermutohedralLattice(*(t.cuda() for t in cpu))
        torch.testing.assert_close(
            moved.filter(values.cuda()).cpu() if not adjoint else moved.filter_adjoint(values.cuda()).cpu(),
            expected,
            rtol=1e-5,
            atol=1e-6,
        )


@requires_cuda
@pytest.mark.cuda
def test_cuda_dense_crf_equals_cpu_and_gradcheck():
    unary, image = crf_case(12, batch=2, labels=5, height=30, width=40, dtype=torch.float32)
    torch.testing.assert_close(
        segops.dense_crf(unary.cuda(), image.cuda(), 5).cpu(), segops.dense_crf(unary, image, 5), rtol=1e-4, atol=1e-5
    )
    unary64, image64 = crf_case(13, batch=1, labels=3, height=5, width=6)
    unary64 = unary64.cuda().requires_grad_()
    torch.autograd.gradcheck(lambda u: segops.dense_crf(u, image64.cuda(), 2, **SMALL_CRF), (unary64,))


@requires_cuda
@pytest.mark.cuda
def test_cuda_path_does_not_synchronise_and_captures_in_a_graph():
    """The default call (Python-float weights) included: its weights are made on the device by a fill, not copied."""
    g = torch.Generator().manual_seed(0)
    unary = torch.randn(2, 4, 12, 16, generator=g)
    image = (torch.rand(2, 3, 12, 16, generator=g) * 255).to(torch.uint8)
    assert_cuda_path_does_not_synchronise(lambda u, i: segops.dense_crf(u, i, 3), unary, image)


@requires_cuda
@pytest.mark.cuda
def test_cuda_memory_does_not_grow_with_the_batch():
    """An image at a time: a batch of 4 needs the memory of one image beyond its output (the emulated measurement at
    Cityscapes size is test_emulation.py's test_dense_crf_cuda_path_memory_for_a_cityscapes_batch)."""

    def extra_memory(batch):
        unary, image = crf_case(14, batch=batch, labels=19, height=256, width=512, dtype=torch.float32)
        unary, image = unary.cuda(), image.cuda()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        with torch.no_grad():
            out = segops.dense_crf(unary, image)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before - out.numel() * out.element_size()

    one, four = extra_memory(1), extra_memory(4)
    assert four <= 1.1 * one, (one, four)
