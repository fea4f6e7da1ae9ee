"""The SQL examples in sql/ run as written (psql, ON_ERROR_STOP), as an ordinary role."""

from conftest import APP_ROLE, ROOT


def test_sql_examples_run_in_order(admin, psql):
    # loading reads server files: the one privilege beyond CREATE that the examples need
    admin.execute(f"GRANT pg_read_server_files TO {APP_ROLE}")
    admin.execute(f"GRANT EXECUTE ON FUNCTION pg_read_binary_file(text) TO {APP_ROLE}")
    try:
        outputs = {}
        for path in sorted((ROOT / "sql").glob("[0-9]*.sql")):
            outputs[path.name] = psql(path).stdout
    finally:
        admin.execute(f"REVOKE pg_read_server_files FROM {APP_ROLE}")
        admin.execute(f"REVOKE EXECUTE ON FUNCTION pg_read_binary_file(text) FROM {APP_ROLE}")

    search = outputs["05_search.sql"].splitlines()
    # the dog photo finds itself first, at distance 0
    first = next(line for line in search if line.strip().startswith("1 |"))
    assert "dog" in first and first.rstrip().endswith("0")
    assert "bald eagle" in outputs["05_search.sql"]
    assert "efficientnet_lite0_normalized | 1280 |   1280" in outputs["06_pipeline.sql"]  # the default model
    assert "(7 rows)" in outputs["03_embed.sql"]
