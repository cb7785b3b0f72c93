from app.schemas.models import ModelInfo
from launchers import TEST_DEVICE
from tests.app.conftest import VARIANTS


def test_list_models(client):
    body = client.get("/v1/models").json()
    assert body["default"] == "gru"
    assert [m["name"] for m in body["models"]] == list(VARIANTS)  # each variant, by name
    gru = body["models"][0]
    assert gru["variant"] == "gru" and gru["default"] is True
    assert gru["parameters"] == 23784 and gru["hidden_size"] == 56 and gru["vocab_size"] == 40
    assert gru["device"] == TEST_DEVICE  # the CPU, or cuda on the GPU machine's run
    assert len(gru["sha256"]) == 64
    assert 0.3 < gru["valid_accuracy"] < 1
    assert [m["default"] for m in body["models"]] == [name == "gru" for name in VARIANTS]


def test_one_model_with_its_vocabulary(client):
    body = client.get("/v1/models/gru-custom").json()
    assert body["variant"] == "gru-custom"
    assert len(body["vocab"]) == 40 and body["vocab"][9] == ","
    assert "hundred" in body["words"] and "xxpad" not in body["words"]


def test_unknown_model(client):
    r = client.get("/v1/models/lstm")
    assert r.status_code == 404
    assert r.json()["detail"] == f"no model 'lstm'; loaded: {', '.join(VARIANTS)}"


def test_the_schema_names_every_variant():
    described = ModelInfo.model_fields["variant"].description or ""
    assert all(f"{name} (" in described for name in VARIANTS), described
