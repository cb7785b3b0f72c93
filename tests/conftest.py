import pytest

from training.data import HumanNumbers, load_data


@pytest.fixture(scope="session")
def data() -> HumanNumbers:
    return load_data()
