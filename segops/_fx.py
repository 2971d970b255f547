"""FX: a segops function called on traced values becomes one graph node, whatever name it was imported under.

torchvision marks its ops with ``torch.fx.wrap``, which patches the function only in the module that marks it: a
network that does ``from segops import max_unpool2d`` would still be traced through the function's argument checks,
which cannot read a Proxy. So each public function asks :func:`traced_call` first: when any argument is an FX Proxy
(``torch.fx.symbolic_trace``, torchvision's ``create_feature_extractor``), the call is recorded as one node."""

import functools
from typing import Any, Callable, Optional

from torch.fx import Proxy


def _first_proxy(values) -> Optional[Proxy]:
    for value in values:
        if isinstance(value, Proxy):
            return value
        if isinstance(value, (list, tuple)):  # a list of boxes or feature maps; one level is all the ops take
            for item in value:
                if isinstance(item, Proxy):
                    return item
    return None


def traced_call(fn: Callable, *args: Any, **kwargs: Any) -> Optional[Proxy]:
    """``fn(*args, **kwargs)`` as one call_function node if an argument (or a list entry) is an FX Proxy, else
    None. On every eager call, so a plain loop (a pytree walk costs several microseconds)."""
    proxy = _first_proxy(args)
    if proxy is None:  # not `or`: a Proxy's truth value is itself traced, and refused
        proxy = _first_proxy(kwargs.values())
    return None if proxy is None else proxy.tracer.create_proxy("call_function", fn, args, kwargs)


def one_fx_node(fn: Callable) -> Callable:
    """Decorates a public function so that FX records it as one node (:func:`traced_call`). TorchScript refuses it
    by name (:func:`not_scriptable`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        node = traced_call(wrapper, *args, **kwargs)
        return node if node is not None else fn(*args, **kwargs)

    wrapper.__prepare_scriptable__ = functools.partial(not_scriptable, fn.__name__.lstrip("_"))
    return wrapper


def not_scriptable(name: str) -> None:
    """What ``torch.jit.script`` of a segops function or module without TorchScript support raises (from
    ``__prepare_scriptable__``, which TorchScript calls first, also on what a scripted caller reaches)."""
    raise RuntimeError(
        f"{name}: TorchScript is not supported; use torch.compile or torch.export, which support every segops op "
        f"(docs/deployment.md, 'Every way to call an op', lists what scripts)"
    )
