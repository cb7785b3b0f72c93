import pytest

from training.data import HumanNumbers, load_data


@pytest.fixture(scope="session")
def data() -> HumanNumbers:
    return load_data()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    from launchers import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()
