"""The API's routes, one module a resource, all under API_PREFIX (but health's)."""

API_PREFIX = "/v1"
COMPLETIONS = f"{API_PREFIX}/completions"
OPENAI_PATHS = frozenset({COMPLETIONS})  # these answer errors in OpenAI's shape
