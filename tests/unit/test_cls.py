"""Class, parameter and modifier-decorator validation: every misuse is an InvalidError naming it."""

import pytest

import vivace
from vivace.exception import InvalidError
from vivace.protocol.functions import FunctionSpec, SpecError
from vivace.server.services.apps import variant_spec


def make_app():
    return vivace.App("t")


def test_a_class_becomes_one_function_with_its_methods():
    app = make_app()

    @app.cls(cpu=2, serialized=True)
    @vivace.concurrent(max_inputs=8, target_inputs=3)
    class Model:
        size: int = vivace.parameter(default=1)

        @vivace.method()
        def predict(self, x):
            return x

        @vivace.method()
        def stream(self):
            yield 1

        def helper(self):  # not a method callers can reach
            return 0

    spec = app.registered_functions["Model"].spec
    assert spec.is_class and spec.cpu == 2
    assert spec.methods == {"predict": {"is_generator": False}, "stream": {"is_generator": True}}
    assert (spec.max_inputs, spec.target_inputs) == (8, 3)
    obj = Model(size=4)
    assert obj.predict.local(5) == 5
    with pytest.raises(AttributeError, match="helper"):
        obj.helper  # noqa: B018


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": "big"}, "parameter 'size' is int"),
        ({"size": True}, "parameter 'size' is int"),
        ({"colour": "red"}, "unknown parameter"),
        ({}, "missing parameter 'name'"),
    ],
)
def test_bad_parameters_are_rejected_before_anything_runs(kwargs, message):
    app = make_app()

    @app.cls(serialized=True)
    class Model:
        name: str = vivace.parameter()
        size: int = vivace.parameter(default=1)

        @vivace.method()
        def f(self):
            return self.name

    with pytest.raises(InvalidError, match=message):
        Model(**({"name": "n"} if "name" not in message else {}) | kwargs)


def test_positional_parameters_are_rejected():
    app = make_app()

    @app.cls(serialized=True)
    class Model:
        name: str = vivace.parameter(default="x")

        @vivace.method()
        def f(self):
            return 1

    with pytest.raises(InvalidError, match="keywords"):
        Model("x")


def test_class_misuse():
    app = make_app()
    with pytest.raises(InvalidError, match="__init__"):

        @app.cls()
        class WithInit:
            def __init__(self):
                pass

            @vivace.method()
            def f(self):
                return 1

    with pytest.raises(InvalidError, match=r"no @vivace\.method"):

        @app.cls()
        class NoMethods:
            pass

    with pytest.raises(InvalidError, match="float"):

        @app.cls()
        class BadType:
            x: float = vivace.parameter(default=1.0)

            @vivace.method()
            def f(self):
                return 1

    with pytest.raises(InvalidError, match="no 'schedule'"):
        app.cls(schedule=1)
    with pytest.raises(InvalidError, match=r"use @app\.cls"):
        app.function()(type("K", (), {}))
    with pytest.raises(InvalidError, match="decorates classes"):
        app.cls()(lambda: 1)


def test_modifier_decorators_validate_and_must_sit_below_app_function():
    app = make_app()
    with pytest.raises(InvalidError, match="max_inputs must be between"):
        vivace.concurrent(max_inputs=0)
    with pytest.raises(InvalidError, match="target_inputs must be between"):
        vivace.concurrent(max_inputs=2, target_inputs=3)
    with pytest.raises(InvalidError, match="max_batch_size"):
        vivace.batched(max_batch_size=0, wait_ms=10)
    with pytest.raises(InvalidError, match="wait_ms"):
        vivace.batched(max_batch_size=2, wait_ms=-1)
    with pytest.raises(InvalidError, match="parentheses"):
        vivace.method(lambda self: 1)

    def plain(x):
        return x

    fn = app.function(serialized=True)(plain)
    with pytest.raises(InvalidError, match="below them"):
        vivace.concurrent(max_inputs=2)(fn)
    with pytest.raises(InvalidError, match="generator"):

        @vivace.batched(max_batch_size=2, wait_ms=1)
        def gen(xs):
            yield xs

    with pytest.raises(InvalidError, match="both @concurrent and @batched"):

        @app.function(serialized=True)
        @vivace.concurrent(max_inputs=2)
        @vivace.batched(max_batch_size=2, wait_ms=1)
        def both(xs):
            return xs


def test_batched_method_must_be_the_only_method():
    app = make_app()
    with pytest.raises(InvalidError, match="no other"):

        @app.cls(serialized=True)
        class Mixed:
            @vivace.method()
            @vivace.batched(max_batch_size=4, wait_ms=10)
            def many(self, xs):
                return xs

            @vivace.method()
            def one(self, x):
                return x

    @app.cls(serialized=True)
    class Good:
        @vivace.method()
        @vivace.batched(max_batch_size=4, wait_ms=10)
        def many(self, xs):
            return xs

    spec = app.registered_functions["Good"].spec
    assert (spec.batch_max_size, spec.batch_wait_ms) == (4, 10)

    @app.cls(serialized=True)
    class Bare:  # as in Modal, @batched alone makes a method
        @vivace.batched(max_batch_size=3, wait_ms=5)
        async def many(self, xs):
            return xs

    spec = app.registered_functions["Bare"].spec
    assert spec.methods == {"many": {"is_generator": False}} and spec.batch_max_size == 3
    assert Bare().many._method == "many"
    with pytest.raises(InvalidError, match="max_batch_size"):
        Good.with_batching(max_batch_size=10_000, wait_ms=1)


def test_old_modal_spellings_name_the_new_one():
    with pytest.raises(InvalidError, match=r"vivace\.App"):
        vivace.Stub  # noqa: B018
    with pytest.raises(InvalidError, match="fastapi_endpoint"):
        from vivace import web_endpoint  # noqa: F401
    app = make_app()
    for old, new in [
        ("keep_warm", "min_containers"),
        ("concurrency_limit", "max_containers"),
        ("container_idle_timeout", "scaledown_window"),
        ("allow_concurrent_inputs", "concurrent"),
    ]:
        with pytest.raises(InvalidError, match=new):
            app.function(**{old: 1})
        with pytest.raises(InvalidError, match=new):
            app.cls(**{old: 1})
    fn = app.function()(lambda_free)
    with pytest.raises(InvalidError, match="remote"):
        fn.call(1)
    with pytest.raises(InvalidError, match="spawn"):
        fn.submit(1)
    with pytest.raises(InvalidError, match="with_options"):
        fn.with_options(concurrency_limit=2)


def lambda_free(x):
    return x


def test_with_options_validates_like_app_function():
    app = make_app()
    fn = app.function()(lambda_free)
    with pytest.raises(InvalidError, match="cpu"):
        fn.with_options(cpu=-1)
    with pytest.raises(InvalidError, match="unknown"):
        fn.with_options(colour="red")
    with pytest.raises(InvalidError, match=r"vivace\.Volume"):
        fn.with_options(volumes={"/x": object()})
    with pytest.raises(InvalidError, match=r"vivace\.Secret"):
        fn.with_options(secrets=["not a secret"])


def base_spec(**kw):
    return FunctionSpec(
        name="Model",
        module="m",
        qualname="Model",
        is_class=True,
        methods={"f": {"is_generator": False}},
        **kw,
    )


def test_variant_specs_are_named_by_content_and_validated():
    base = base_spec(env={"A": "1"})
    v1 = variant_spec(base, {"size": 2}, {"cpu": 2.0, "env": {"B": "2"}})
    assert v1.name == variant_spec(base, {"size": 2}, {"cpu": 2.0, "env": {"B": "2"}}).name
    assert v1.name != variant_spec(base, {"size": 3}, {"cpu": 2.0, "env": {"B": "2"}}).name
    assert v1.name.startswith("Model#") and v1.variant_of == "Model"
    assert v1.env == {"A": "1", "B": "2"} and v1.params == {"size": 2} and v1.cpu == 2.0
    with pytest.raises(SpecError, match="cannot change"):
        variant_spec(base, None, {"module": "evil"})
    with pytest.raises(SpecError, match="no @batched"):
        variant_spec(base, None, {"batch_max_size": 4, "batch_wait_ms": 1})
    with pytest.raises(SpecError, match="variants of its own"):
        variant_spec(v1, None, {})
    fn = FunctionSpec(name="f", module="m", qualname="f")
    with pytest.raises(SpecError, match="takes no parameters"):
        variant_spec(fn, {"x": 1}, {})
    with pytest.raises(SpecError, match="str, int, bool or bytes"):
        variant_spec(base, {"x": [1]}, {})
