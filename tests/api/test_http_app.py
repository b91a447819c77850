import pytest

from gateway.api.http_app import infer_path_params


@pytest.mark.parametrize(
    "path, params",
    [
        ("/v2/models/digits/infer", {"model": "digits"}),
        ("/v2/models/digits/versions/3/infer", {"model": "digits", "version": "3"}),
        ("/v2/models//infer", None),
        ("/v2/models/digits/versions//infer", None),
        ("/v2/models/digits/ready", None),
        ("/v2/models/a/b/infer", None),
        ("/v1/models/digits/infer", None),
    ],
)
def test_only_infer_paths_take_the_fast_path(path, params) -> None:
    assert infer_path_params(path) == params
