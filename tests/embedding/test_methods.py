"""Every registered method: forward/backward on multivalent and empty bags, gradients reach every
parameter, parameter counts match the method's formula, and build_method(config()) round-trips."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from embedding.methods import Collisionless, CompositionalEmbedding, EmbeddingMethod, build_method, method_names
from embedding.methods.compositional import component_widths
from embedding.methods.hash_embedding import importance_parameters
from embedding.schema import FeatureSchema

D = 4
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "unified": ("unified", {"num_rows": 97}),
    "unified_blocks": ("unified", {"num_rows": 97, "num_blocks": 3}),
    "hashing_trick": ("hashing_trick", {"num_rows": 211}),
    "hash_embedding": ("hash_embedding", {"num_rows": 211, "importance_rows": 31, "num_hashes": 3}),
    "hash_embedding_mux": ("hash_embedding", {"num_rows": 101, "importance_rows": 17, "multiplexed": True}),
    "hashednet": ("robe", {"size": 301, "block": 1, "multiplexed": False}),
    "robe_mux": ("robe", {"size": 301, "block": 3, "multiplexed": True}),
    "robe_d": ("robe", {"size": 301, "block": 4, "signed": False}),
    "robe_club": ("robe", {"size": 301, "block": 16}),
    "qr_mult": ("compositional", {"moduli": [7, 5], "operation": "mult"}),
    "crt_add": ("compositional", {"moduli": [7, 5, 3], "partition": "crt", "operation": "add"}),
    "pq": ("compositional", {"moduli": [7, 5, 4], "operation": "concat"}),
    "path": ("compositional", {"moduli": [7, 3], "operation": "path"}),
    "path_mlp": ("compositional", {"moduli": [7, 3], "operation": "path", "path_hidden": 8}),
    "qr_mux": ("compositional", {"moduli": [11, 9], "operation": "mult", "multiplexed": True}),
    "pq_mux": ("compositional", {"moduli": [11, 9], "operation": "concat", "multiplexed": True}),
    "qr_vocab": (
        "compositional",
        {"moduli": {"user": [7, 5], "item": [6, 6], "tags": [4, 2], "city": [3], "home_city": [5]}},
    ),
    "mlet_unified": ("mlet", {"inner": "unified", "inner_args": {"num_rows": 53, "num_blocks": 2}, "inner_dim": 8}),
    "mlet_hashing": ("mlet", {"inner": "hashing_trick", "inner_args": {"num_rows": 100}, "inner_dim": 6}),
    "managed_collision": ("managed_collision", {"num_rows": 120, "eviction_interval": 1}),
}


def build(case: str, schema: FeatureSchema, kjt: KeyedJaggedTensor) -> EmbeddingMethod:
    if case == "collisionless":
        return Collisionless.fit(schema, [kjt])
    method, args = CASES[case]
    module = build_method(method, schema, **args)
    if case == "qr_vocab":  # the batch's users and items enumerated; city and home_city full tables
        vocab = {n: torch.unique(kjt[n].values()) for n in ("user", "item", "city")}
        return CompositionalEmbedding.from_vocabulary(schema, vocab, **args)
    return module


def expected_parameters(module: EmbeddingMethod, schema: FeatureSchema) -> int:
    cfg, d = module.config(), schema.embedding_dim
    widths = {s.name: schema.width(s.name) for s in schema.sparse}
    match module.method:
        case "unified":
            return cfg["num_rows"] * d
        case "hashing_trick" | "managed_collision":
            return sum(cfg["rows"][n] * w for n, w in widths.items())
        case "collisionless":
            return sum((cfg["vocab_sizes"][n] + 1) * w for n, w in widths.items())
        case "hash_embedding":
            k = cfg["num_hashes"]  # packed: rows x k weights, padded to a multiple of 4 in all
            if cfg["multiplexed"]:
                return cfg["num_rows"] * d + importance_parameters(cfg["importance_rows"], k)
            return sum(
                cfg["rows"][n] * w + importance_parameters(cfg["importance_rows"][n], k) for n, w in widths.items()
            )
        case "robe":
            total = cfg["size"] if cfg["multiplexed"] else sum(cfg["sizes"].values())
            return -(-total // 4) * 4  # rows of 4 elements: the last row's tail is padding
        case "compositional":
            op, hidden = cfg["operation"], cfg.get("path_hidden", 0)
            if cfg["multiplexed"]:
                cws = component_widths(d, len(cfg["moduli"]), op, hidden)
                return sum(m * w for m, w in zip(cfg["moduli"], cws, strict=True))
            return sum(
                m * cw
                for n, w in widths.items()
                for m, cw in zip(cfg["moduli"][n], component_widths(w, len(cfg["moduli"][n]), op, hidden), strict=True)
            )
        case "mlet":
            k, inner = cfg["inner_dim"], cfg["inner_args"]
            if cfg["inner"] == "unified":
                return inner["num_rows"] * k + k * d
            lookups = {s.name: s.lookups for s in schema.sparse}
            return sum(inner["rows"][n] * lookups[n] * k + lookups[n] * k * w for n, w in widths.items())
    raise AssertionError(module.method)


ALL = [*CASES, "collisionless"]


def test_every_registered_method_is_covered() -> None:
    assert {CASES[c][0] for c in CASES} | {"collisionless"} == set(method_names())


@pytest.mark.parametrize("case", ALL)
def test_forward_backward_and_parameter_count(case: str, schema: FeatureSchema, kjt: KeyedJaggedTensor) -> None:
    torch.manual_seed(0)
    module = build(case, schema, kjt)
    out = module(kjt)
    assert out.keys() == schema.sparse_names
    assert out.length_per_key() == [schema.width(n) for n in schema.sparse_names]
    values = out.values()
    assert values.shape == (4, schema.total_width)
    assert torch.isfinite(values).all()
    per = out.to_dict()
    assert torch.all(per["tags"][1] == 0), "an empty bag pools to zeros"
    assert torch.all(per["home_city"][1] == 0)
    assert per["tags"][0].abs().sum() > 0
    (values * torch.randn_like(values)).sum().backward()
    for name, param in module.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{case}: no gradient reaches {name}"
    assert module.num_parameters() == expected_parameters(module, schema)
    assert module.num_bytes() == 4 * module.num_parameters()


@pytest.mark.parametrize("case", ALL)
def test_config_round_trips(case: str, schema: FeatureSchema, kjt: KeyedJaggedTensor) -> None:
    module = build(case, schema, kjt).eval()
    clone = build_method(module.method, schema, **module.config())
    assert clone.config() == module.config()
    clone.load_state_dict(module.state_dict())
    torch.testing.assert_close(clone.eval()(kjt).values(), module(kjt).values(), rtol=0, atol=0)


def test_mean_pooling_divides_by_bag_length(schema: FeatureSchema, kjt: KeyedJaggedTensor) -> None:
    summed = schema.model_copy(update={"sparse": tuple(s.model_copy(update={"pooling": "sum"}) for s in schema.sparse)})
    torch.manual_seed(0)
    mean_out = build_method("hashing_trick", schema, num_rows=211)(kjt).to_dict()["tags"]
    torch.manual_seed(0)
    sum_out = build_method("hashing_trick", summed, num_rows=211)(kjt).to_dict()["tags"]
    lengths = kjt["tags"].lengths().clamp(min=1).unsqueeze(1).float()
    torch.testing.assert_close(mean_out, sum_out / lengths)


def test_collisionless_maps_every_known_value_to_its_own_row(schema: FeatureSchema, kjt: KeyedJaggedTensor) -> None:
    module = Collisionless.fit(schema, [kjt])
    known = kjt["tags"].values()
    rows = module.rows_for("tags", known)
    assert sorted(rows.tolist()) == list(range(known.numel()))
    oov = module.rows_for("tags", torch.tensor([3, -5, 2**40]))
    assert oov.tolist() == [module.vocab_sizes["tags"]] * 3, "unseen values share the reserved OOV row"
    assert "vocab_2" in module.state_dict(), "the vocabulary is saved with the weights"


def test_hashing_trick_sizes_tables_by_vocabulary_share(schema: FeatureSchema) -> None:
    module = build_method("hashing_trick", schema, num_rows=890)
    rows = module.config()["rows"]
    assert sum(rows.values()) == 890
    assert rows == {"user": 500, "item": 300, "tags": 50, "city": 20, "home_city": 20}


def test_managed_collision_admits_ids_after_eviction(schema: FeatureSchema, kjt: KeyedJaggedTensor) -> None:
    module = build_method("managed_collision", schema, rows=dict.fromkeys(schema.sparse_names, 8), eviction_interval=1)
    for _ in range(2):
        module(kjt)
    mch = module.mc_ebc._managed_collision_collection._managed_collision_modules["zch_user"]
    admitted = mch._mch_sorted_raw_ids
    users = kjt["user"].values() & ((1 << 62) - 1)
    assert set(users.tolist()) <= set(admitted.tolist())


def test_component_widths_cover_the_feature() -> None:
    assert component_widths(7, 3, "concat") == [3, 2, 2]
    assert component_widths(16, 3, "concat") == [8, 4, 4], "multiples of 4 where the width allows"
    assert component_widths(4, 2, "path") == [4, 4 * 4 + 4], "an affine map: A and b"
    assert component_widths(4, 2, "path", 8) == [4, 4 * 8 + 8 + 8 * 4 + 4], "an MLP: A1, b1, A2, b2"
    assert component_widths(4, 1, "path") == [4], "one modulus: a full table"
    assert component_widths(4, 3, "mult") == [4, 4, 4]
