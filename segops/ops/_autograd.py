"""One autograd.Function per op, registered as the op's Autograd kernel: reverse mode, forward mode and torch.func.

``torch.library.register_autograd`` gives an op no forward-mode derivative (a dual input's tangent is dropped without
a word, so ``jvp`` and ``jacfwd`` return zeros) and generates a Function that keeps ``ctx`` in ``forward``, which
``torch.func`` rejects. So each op defines its ``<Op>Function`` with ``forward`` (the op below autograd),
``setup_context``, ``backward`` and ``jvp``, and :func:`register_function` makes its ``apply`` the op's Autograd
kernel: ``torch.ops.segops.<op>``, the functional front end, TorchScript and ``torch.compile`` all reach it.
``generate_vmap_rule`` lets ``torch.func.vmap`` run the Function; the ops' batching rules are in ``segops._vmap``."""

import inspect
from typing import Any, Callable, NoReturn

import torch
from torch._library.utils import fill_defaults
from torch.autograd import forward_ad

_LIBRARY = torch.library.Library("segops", "IMPL")


def below_autograd(op: Callable, *args: Any) -> Any:
    """op(*args) with the Autograd keys skipped: a Function's forward, which must not re-enter its own kernel."""
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def _needs_autograd(args) -> bool:
    # Forward-mode AD works under no_grad too: any open dual level sends the call through the Function.
    if forward_ad._current_level >= 0:
        return True
    return _wants_gradient(args)


def _wants_gradient(args) -> bool:
    """Whether grad mode is on and a tensor argument (or one in a list or tuple) requires a gradient."""
    if not torch.is_grad_enabled():
        return False
    # _any_requires_grad looks into lists of tensors but not into tuples (which front ends may pass).
    return torch._C._any_requires_grad(*(list(a) if isinstance(a, tuple) else a for a in args))


def _same(value):
    return value


class _Constant(tuple):
    """A list argument of ints or floats (strides, sizes, scales) as one pytree leaf. torch.func's generated vmap
    rule for a Function's jvp flattens the in_dims of list arguments but not the list arguments themselves (a
    PyTorch bug that turns hessian of an op with list arguments into a pytree error): a tuple subclass is a leaf."""


def _constant_lists(args: tuple) -> tuple:
    return tuple(
        _Constant(value) if isinstance(value, list) and not any(isinstance(v, torch.Tensor) for v in value) else value
        for value in args
    )


class OpFunction(torch.autograd.Function):
    """The base of segops' autograd.Functions: ``apply`` hands list arguments of numbers on as :class:`_Constant`.

    In plain eager mode (no torch.func transform, not compiling) ``apply`` runs the Function's eager twin
    (:func:`_eager_twin`): the same forward, setup_context, backward and jvp as an old-style Function. A Function
    with a setup_context pays PyTorch's binding of its arguments to forward's signature (inspect.signature.bind) on
    every call: 15-45 us, more than a small op's kernel (a 64 x 32 x 32 max-unpooling: 10-20 us)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # Where the binding still runs (torch.func, torch.compile), inspect.signature reads a __signature__ at once
        # instead of rebuilding it from the code object (1 us rather than 9).
        forward = cls.__dict__.get("forward")
        if isinstance(forward, staticmethod):
            forward.__func__.__signature__ = inspect.signature(forward.__func__)
        cls._eager = _eager_twin(cls)

    @classmethod
    def apply(cls, *args):
        args = _constant_lists(args)
        if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
            return super().apply(*args)
        return cls._eager.apply(*args)


def _eager_twin(function: type) -> type:
    """An old-style autograd.Function (``forward(ctx, *args)``, no setup_context) that calls ``function``'s forward,
    then its setup_context, and has its backward and jvp: what autograd records, saves and computes is the same, under
    the same name. Its ``apply`` fills in omitted arguments' defaults, as PyTorch's binding does, so that forward,
    setup_context, backward and jvp see every argument."""
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    parameters = [p for p in inspect.signature(function.forward).parameters.values() if p.kind in positional]
    defaults = tuple(p.default for p in parameters if p.default is not inspect.Parameter.empty)

    def apply(cls, *args):
        missing = len(parameters) - len(args)
        if missing > 0:
            args = args + defaults[len(defaults) - missing :]
        return super(cls, cls).apply(*args)

    def forward(ctx, *args):
        output = function.forward(*args)
        function.setup_context(ctx, args, output)
        return output

    namespace = {
        "apply": classmethod(apply),
        "forward": staticmethod(forward),
        "backward": staticmethod(function.backward),
        "jvp": staticmethod(function.jvp),
        "__module__": function.__module__,
        "__qualname__": function.__qualname__,
        "__doc__": f"{function.__qualname__} as an old-style Function (OpFunction.apply in eager mode).",
    }
    return type(function.__name__, (torch.autograd.Function,), namespace)


# Each registered Function's (to_function_args, to_op_output): how call() applies it directly.
_ADAPTERS: dict = {}


def register_function(
    op_name: str, function: type, to_function_args: Callable = _same, to_op_output: Callable = _same
) -> None:
    """Makes ``function.apply`` the Autograd kernel of ``segops::<op_name>``. ``function.apply`` takes the op's
    arguments in the op's order, or as ``to_function_args(args)`` gives them (autograd.Function sees tensors only as
    direct arguments, not inside a list); ``to_op_output`` turns its result into the op's (a tuple into a list)."""
    op = getattr(torch.ops.segops, op_name).default
    _ADAPTERS[function] = (to_function_args, to_op_output)

    def autograd_kernel(keyset, *args):
        if _needs_autograd(args):
            if torch._C._are_functorch_transforms_active():
                # torch.func runs an autograd.Function from Python, before the dispatcher; here it is too late.
                raise RuntimeError(
                    f"segops::{op_name}: under torch.func transforms, differentiate the front end (segops.*) or "
                    f"{function.__name__}.apply, not torch.ops.segops.{op_name} itself"
                )
            args, _ = fill_defaults(op._schema, args, {})  # the dispatcher drops arguments equal to their default
            return to_op_output(function.apply(*to_function_args(args)))
        with torch._C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & torch._C._after_autograd_keyset, *args)

    _LIBRARY.impl(op_name, autograd_kernel, "Autograd", with_keyset=True)


def call(function: type, op: Callable, *args: Any) -> Any:
    """The front ends' call of an op: ``op(*args)``, or ``function.apply(*args)`` under torch.func transforms, which
    must meet the Function before the dispatcher does. Where nothing needs a gradient (inference, no_grad, inputs
    without requires_grad) the op runs below autograd at once, as its Autograd kernel would after a round trip through
    Python (about a third of a small call's fixed cost); autocast, above autograd, still applies. Where a gradient is
    needed, the Function is applied here, as the Autograd kernel would (see _applies_directly). Traced calls
    (torch.compile) keep the plain path."""
    if torch._C._are_functorch_transforms_active():
        return function.apply(*args)
    if not torch.compiler.is_compiling():  # Dynamo cannot trace _any_requires_grad
        if not _needs_autograd(args):
            with torch._C._AutoDispatchBelowAutograd():
                return op(*args)
        if _applies_directly(args):
            to_function_args, to_op_output = _ADAPTERS[function]
            return to_op_output(function.apply(*to_function_args(args)))
    return op(*args)


def _applies_directly(args) -> bool:
    """Whether a front end may apply an op's Function itself where a gradient is needed: the op's Autograd kernel
    would apply the same Function, after a round trip through Python that fills in the schema's defaults (about
    20 us, a fifth of a small op's forward). Not where something must meet the op call first: autocast (above
    autograd: it casts the arguments), a TorchScript trace (it records dispatcher calls), a __torch_function__ mode
    or tensor subclass."""
    if (
        torch._C._is_any_autocast_enabled()
        or torch._C._get_tracing_state() is not None
        or torch._C._is_torch_function_mode_enabled()
    ):
        return False
    return not torch._C._has_torch_function(
        tuple(item for a in args for item in (a if isinstance(a, (list, tuple)) else (a,)))
    )


def _wants_derivative(args) -> bool:
    """Whether a tensor argument (or one in a list) wants a reverse-mode gradient or carries a forward-mode tangent:
    unlike _needs_autograd, an open dual level alone is not enough."""
    if _wants_gradient(args):
        return True
    if forward_ad._current_level < 0:
        return False
    tensors = [t for a in args for t in (a if isinstance(a, (list, tuple)) else (a,)) if isinstance(t, torch.Tensor)]
    return any(forward_ad.unpack_dual(t).tangent is not None for t in tensors)


def register_no_derivative(op_name: str, reason: str) -> None:
    """Makes the Autograd kernel of ``segops::<op_name>``, an op without a derivative, refuse a call that wants one
    (PyTorch's fallback would warn and let the gradient through it be silently zero) and run the op otherwise."""
    op = getattr(torch.ops.segops, op_name).default

    def autograd_kernel(keyset, *args):
        if _wants_derivative(args):
            raise RuntimeError(f"segops::{op_name} has no derivative ({reason})")
        with torch._C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & torch._C._after_autograd_keyset, *args)

    _LIBRARY.impl(op_name, autograd_kernel, "Autograd", with_keyset=True)


def save_for_backward_and_jvp(ctx, *tensors) -> None:
    """Saves tensors for both the backward and the jvp (``ctx.saved_tensors`` in either)."""
    ctx.save_for_backward(*tensors)
    ctx.save_for_forward(*tensors)


def no_forward_ad(message: str) -> Callable:
    """A jvp that raises `message` (which names the op): never a silent zero tangent."""

    def jvp(ctx, *tangents):
        raise RuntimeError(message)

    return staticmethod(jvp)


def no_double_backward(op: str, reason: str) -> NoReturn:
    """What a backward that cannot be differentiated raises when asked to (``create_graph=True``, double backward):
    an error naming the op and why, never a silently wrong (constant) second derivative."""
    raise RuntimeError(f"{op}: double backward is not supported ({reason})")


def once_differentiable_backward(op: str, backward_op: Callable, reason: str) -> type:
    """The autograd.Function of a backward op that is differentiable no further: its backward and its jvp (what
    ``hessian`` needs) raise errors naming the op."""

    class BackwardFunction(OpFunction):
        generate_vmap_rule = True

        @staticmethod
        def forward(*args):
            return below_autograd(backward_op, *args)

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, *grads):
            no_double_backward(op, reason)

        jvp = no_forward_ad(
            f"{op}: forward-mode AD of its gradient (e.g. torch.func.hessian) is not supported ({reason})"
        )

    BackwardFunction.__name__ = BackwardFunction.__qualname__ = f"_{op}_backward_function"
    return BackwardFunction
