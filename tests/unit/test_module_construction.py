"""The construction guard (webui/models/module_construction.py): a ControlNet built or an embedding applied on one
worker while another worker loads a checkpoint gets real weights; two loads never leave torch patched; a build in
a window opened outside the guard waits for it, and says so when it lasts too long; and the app enters
accelerate's init_empty_weights nowhere else and loads diffusers/transformers models only inside the guard.

A checkpoint load is played by a thread doing exactly what `checkpoint_loading.build_module` does around each
component, holding the window long enough that the other build deterministically starts inside it.
"""

from __future__ import annotations

import ast
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from tests.support.controlnet_files import sd1_unet_config, tiny_controlnet, write_ldm
from webui.models.controlnet_store import ControlNetStore
from webui.models.embeddings import EmbeddingInjector, read_embedding
from webui.models.module_construction import (
    ModuleConstructionBusy, constructing_modules, empty_weights, empty_weights_window_open,
)

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
WINDOW_S = 1.0


def checkpoint_load_on_another_worker(seconds: float = WINDOW_S) -> threading.Event:
    """Start a thread that loads "a checkpoint component": under the construction lock, the weightless module is
    built inside the empty-weights window, kept open `seconds`. Returns once the window is open; the event is set
    when it has closed (before the lock is released, so a build that waited always sees it set)."""
    opened, closed = threading.Event(), threading.Event()

    def load() -> None:
        with constructing_modules():
            with empty_weights():
                opened.set()
                time.sleep(seconds)
            closed.set()

    threading.Thread(target=load, daemon=True).start()
    assert opened.wait(10)
    return closed


def no_meta(module: torch.nn.Module) -> bool:
    return not any(tensor.is_meta for tensor in (*module.parameters(), *module.buffers()))


def test_a_controlnet_built_while_a_checkpoint_loads_has_the_files_weights(tmp_path):
    reference = tiny_controlnet(sd1_unet_config(), seed=4)
    write_ldm(tmp_path / "control_v11p_sd15_canny.safetensors", reference, "control_model.")
    store = ControlNetStore(tmp_path)
    [(title, _)] = store.usable()

    closed = checkpoint_load_on_another_worker()
    module = store.load(title, "sd1", sd1_unet_config(), "sd-studio-toy", CPU, torch.float32)

    assert closed.is_set()  # the build waited for the load's window
    assert no_meta(module)
    expected = reference.state_dict()
    assert set(module.state_dict()) == set(expected)
    for key, value in module.state_dict().items():
        assert torch.equal(value, expected[key]), key


def _tiny_sd1_text_side() -> SimpleNamespace:
    config = CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                            num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                            bos_token_id=0, eos_token_id=2, pad_token_id=1)
    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(ROOT / "webui" / "models" / "model_configs" / "sd1" / "tokenizer",
                                              local_files_only=True)
    return SimpleNamespace(tokenizer=tokenizer, text_encoder=CLIPTextModel(config).eval())


def test_an_embedding_applied_and_removed_while_checkpoints_load_keeps_the_token_table_real(tmp_path):
    pipeline = _tiny_sd1_text_side()
    table = pipeline.text_encoder.get_input_embeddings
    original = table().weight.detach().clone()
    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(5))
    save_file({"emb_params": vectors}, str(tmp_path / "MyStyle.safetensors"))
    injector = EmbeddingInjector(pipeline, "sd1")

    closed = checkpoint_load_on_another_worker()
    injector.set_active({"MyStyle": read_embedding(tmp_path / "MyStyle.safetensors")})
    assert closed.is_set()
    weight = table().weight
    assert not weight.is_meta and weight.shape == (49408 + 2, 32)
    assert torch.equal(weight[:49408], original) and torch.equal(weight[49408:], vectors)

    closed = checkpoint_load_on_another_worker()
    injector.clear()  # shrinking the table back registers a parameter too
    assert closed.is_set()
    assert not table().weight.is_meta and torch.equal(table().weight, original)


def test_two_loads_at_once_take_turns_and_leave_torch_as_it_was():
    """accelerate restores on exit what it found on entry: overlapping windows would leave its patch installed for
    good (every later module empty). Under the guard the second load waits for the first."""
    torch_register = torch.nn.Module.__dict__["register_parameter"]
    order: list[str] = []

    def second_load() -> None:
        with empty_weights():
            order.append("second in")
        order.append("second out")

    try:
        with empty_weights():
            order.append("first in")
            other = threading.Thread(target=second_load, daemon=True)
            other.start()
            other.join(0.5)  # it cannot get in while this window is open
            order.append("first out")
        other.join(10)
        assert order == ["first in", "first out", "second in", "second out"]
        assert not empty_weights_window_open()
        assert torch.nn.Linear(3, 2).weight.device == CPU
    finally:  # if the guard failed, do not leave the rest of the session building empty modules
        torch.nn.Module.register_parameter = torch_register


def test_a_build_in_a_window_opened_outside_the_guard_waits_for_it_and_then_says_busy():
    from accelerate import init_empty_weights

    with init_empty_weights():  # e.g. an extension calling diffusers' from_pretrained itself
        assert empty_weights_window_open()
        started = time.monotonic()
        with pytest.raises(ModuleConstructionBusy) as refused:
            with constructing_modules(wait_s=0.3):
                torch.nn.Linear(3, 2)
        assert time.monotonic() - started >= 0.3
    assert "try again" in str(refused.value) and "init_empty_weights" in str(refused.value)
    assert not empty_weights_window_open()
    with constructing_modules(wait_s=0.3):  # the lock was released: the next build goes ahead, with real weights
        assert torch.nn.Linear(3, 2).weight.device == CPU


def _names_used(path: Path) -> set[str]:
    """Every name the file's code uses, imports or reads as an attribute (docstrings and comments aside)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.alias):
            names.add(node.name.rsplit(".", 1)[-1])
    return names


def test_the_app_enters_init_empty_weights_only_through_the_guard():
    """One place for the rule: a loader that opened its own window would race every other worker's builds."""
    offenders = [str(path.relative_to(ROOT))
                 for folder in ("webui", "extensions-builtin") for path in sorted((ROOT / folder).rglob("*.py"))
                 if path.name != "module_construction.py"
                 and _names_used(path) & {"init_empty_weights", "init_on_device"}]
    assert offenders == []


GUARDS = {"constructing_modules", "empty_weights"}
LOADERS = {"from_single_file", "from_pretrained"}
NO_MODULES = ("Tokenizer", "TokenizerFast", "Processor", "Config", "Scheduler")  # from_pretrained builds no module


def _unguarded_loads(node: ast.AST, guarded: bool = False) -> list[int]:
    """Lines of `X.from_single_file(...)` / `X.from_pretrained(...)` calls outside a `with` of the guard (a
    `from_pretrained` of a class named like a tokenizer, processor, config or scheduler builds no module; one on
    a computed class, `getattr(...).from_pretrained`, cannot be told apart and is left to review)."""
    if isinstance(node, (ast.With, ast.AsyncWith)):
        guarded = guarded or any(isinstance(item.context_expr, ast.Call) and _called_name(item.context_expr) in GUARDS
                                 for item in node.items)
    found = []
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in LOADERS and not guarded:
        receiver = node.func.value
        name = receiver.id if isinstance(receiver, ast.Name) else getattr(receiver, "attr", None)
        if node.func.attr == "from_single_file" or (name is not None and not name.endswith(NO_MODULES)):
            found.append(node.lineno)
    for child in ast.iter_child_nodes(node):
        found += _unguarded_loads(child, guarded)
    return found


def _called_name(call: ast.Call) -> str | None:
    return call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", None)


def test_model_loads_through_diffusers_or_transformers_happen_inside_the_guard():
    """diffusers' from_single_file / from_pretrained enter init_empty_weights themselves, transformers' patch torch's
    init functions: a model load outside `constructing_modules()` would race every other worker's builds."""
    offenders = [f"{path.relative_to(ROOT)}:{line}"
                 for folder in ("webui", "extensions-builtin") for path in sorted((ROOT / folder).rglob("*.py"))
                 for line in _unguarded_loads(ast.parse(path.read_text(encoding="utf-8")))]
    assert offenders == []

