"""Bad input: a clear error with a SQLSTATE, and the session goes on working."""

import os

import psycopg
import pytest

from data import photo

DOG = photo("dog")

# (case, SET statements before the call, SQL, parameters, SQLSTATE, words in the message)
CASES = [
    ("empty bytes", [], "SELECT pgvision.embed(''::bytea)", [], "22P03", "image is empty"),
    ("random bytes", [], "SELECT pgvision.embed(%s)", [os.urandom(4096)], "22P03", "not recognized"),
    ("truncated jpeg", [], "SELECT pgvision.embed(%s)", [DOG[: len(DOG) // 2]], "22P03", "could not decode"),
    ("text", [], "SELECT pgvision.embed(convert_to('hello, world', 'UTF8'))", [], "22P03", "not recognized"),
    ("over pixel limit", ["SET pgvision.max_pixels = 10000"], "SELECT pgvision.embed(%s)", [DOG],
     "54000", "larger than pgvision.max_pixels (10000)"),
    ("over byte limit", ["SET pgvision.max_image_bytes = 1000"], "SELECT pgvision.embed(%s)", [DOG],
     "54000", "larger than pgvision.max_image_bytes (1000)"),
    ("unknown model", [], "SELECT pgvision.embed(%s, 'no_such_model')", [DOG], "42704",
     'model "no_such_model" does not exist'),
    ("dimension does not fit the column", [],
     "SELECT pgvision.embed(%s)::vector(512)", [DOG], "22000", "expected 512 dimensions, not 1280"),
    ("bad item in a batch", [], "SELECT pgvision.embed_batch(ARRAY[%s, 'junk'::bytea])", [DOG],
     "22P03", "image 2"),
    # the float4-bytes-to-vector conversion every feature goes through (internal, but callable)
    ("float4 bytes not a multiple of 4", [], "SELECT pgvision._vector_from_float4('\\x000000'::bytea)", [],
     "22P03", "expected a multiple of 4 bytes of float4 values, not 3 bytes"),
    ("float4 bytes empty", [], "SELECT pgvision._vector_from_float4(''::bytea)", [], "22000",
     "at least 1 dimension"),
    ("float4 bytes NaN", [], "SELECT pgvision._vector_from_float4('\\x0000c07f'::bytea)", [], "22000",
     "NaN not allowed in vector"),
    ("float4 bytes infinity", [], "SELECT pgvision._vector_from_float4('\\x0000807f'::bytea)", [], "22000",
     "infinite value not allowed in vector"),
    ("float4 bytes over 16000", [], "SELECT pgvision._vector_from_float4(%s)", [bytes(4 * 16001)], "54000",
     "more than 16000 dimensions"),
    ("classify k = 0", [], "SELECT * FROM pgvision.classify(%s, 0)", [DOG], "22023", "k must be at least 1"),
    ("unknown pipeline", [], "SELECT pgvision.pipeline_run('nope', %s)", [DOG], "42704",
     'pipeline "nope" does not exist'),
]


@pytest.mark.parametrize("case,sets,sql,params,sqlstate,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input(conn, case, sets, sql, params, sqlstate, words):
    for statement in sets:
        conn.execute(statement)
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql, params)
    error = info.value
    assert error.sqlstate == sqlstate, (error.sqlstate, str(error))
    message = error.diag.message_primary
    assert words in message
    assert not message.endswith("."), message
    assert "Traceback" not in message and "plpy" not in message
    # the session still works
    for statement in sets:
        conn.execute("RESET " + statement.split()[1])
    assert conn.execute("SELECT vector_dims(pgvision.embed(%s))", [DOG]).fetchone()[0] == 1280


def test_errors_carry_hints(conn):
    with pytest.raises(psycopg.Error) as info:
        conn.execute("SELECT pgvision.embed(%s, 'no_such_model')", [DOG])
    assert "pgvision.models" in info.value.diag.message_hint
