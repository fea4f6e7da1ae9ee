-- Scale-out: backfill on every shard at once (CALL pgvision.embed_table on each, over a
-- dblink connection of its own) and the shards' progress. See 040-shard-remote.sql.

-- One shard's backfill over the dblink connection conn, in two steps, each returning the
-- error as {"state", "error"} instead of raising it:
--   start: CALL pgvision.embed_table sent (a connection of that name an earlier call left
--     open after failing is closed first); NULL;
--   finish, once the connection is no longer busy: the CALL's error, if it failed, else fresh
--     statistics on the shard (every feature changed, and the coordinator plans with the
--     shard's estimates, use_remote_estimate) and its progress row, as {"rows_done",
--     "errors", "null_images", "seconds"}.
CREATE OR REPLACE FUNCTION pgvision._embed_shard(start boolean, conn text, srv name, remote text,
                                                 image_column name, feature_column name, model text,
                                                 batch_size int, retry_errors boolean)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _res jsonb;
    _state text;
    _msg text;
    _detail text;
BEGIN
    IF start THEN
        IF conn = ANY (coalesce(pgvision._dblink_call('get_connections')::text[], '{}')) THEN
            PERFORM pgvision._dblink_call('disconnect', conn);
        END IF;
        PERFORM pgvision._dblink_call('connect', conn, srv);
        -- The shard's per-batch NOTICEs would only reach this server's log.
        PERFORM pgvision._dblink_call('exec', conn, 'SET client_min_messages = warning');
        PERFORM pgvision._dblink_call('send_query', conn,
            pg_catalog.format('CALL pgvision.embed_table(%L, %L, %L, %L, %s, NULL, %L)',
                              remote, image_column, feature_column, model, batch_size, retry_errors));
        RETURN NULL;
    END IF;
    PERFORM pgvision._dblink_call('get_result', conn);  -- raises the shard's error, if the CALL failed
    PERFORM pgvision._dblink_call('get_result', conn);
    PERFORM pgvision._dblink_call('exec', conn, 'ANALYZE ' || remote);
    _res := pgvision._dblink_call('dblink', conn, pg_catalog.format(
        'SELECT pg_catalog.to_jsonb(r)::pg_catalog.text FROM (SELECT p.rows_done, p.errors, p.null_images,'
        ' pg_catalog.date_part(''epoch'', p.finished OPERATOR(pg_catalog.-) p.started) AS seconds'
        ' FROM pgvision.backfill_progress p WHERE p.tbl OPERATOR(pg_catalog.=) %L::pg_catalog.regclass'
        ' AND p.feature_column OPERATOR(pg_catalog.=) %L::pg_catalog.name) r',
        remote, feature_column))::jsonb;
    RAISE NOTICE 'shard "%": % rows embedded in % s, % failed, % without image', srv,
        _res ->> 'rows_done', round((_res ->> 'seconds')::numeric, 1), _res ->> 'errors', _res ->> 'null_images';
    RETURN _res;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS _state = RETURNED_SQLSTATE, _msg = MESSAGE_TEXT, _detail = PG_EXCEPTION_DETAIL;
    RETURN pg_catalog.jsonb_build_object('state', _state, 'error', pgvision._error_text(_msg, _detail));
END
$$;
COMMENT ON FUNCTION pgvision._embed_shard(boolean, text, name, text, name, name, text, int, boolean) IS
'internal: starts (start) or finishes CALL pgvision.embed_table on a shard over a dblink connection of its own; finishing analyzes the shard''s table and returns its progress; either returns an error as {"state", "error"}';

CREATE OR REPLACE FUNCTION pgvision.embed_shards(tbl regclass, image_column name, feature_column name,
                                                 model text DEFAULT 'efficientnet_lite0_normalized',
                                                 batch_size int DEFAULT 64,
                                                 retry_errors boolean DEFAULT false)
RETURNS TABLE (shard name, rows_embedded bigint, failed bigint, without_image bigint, seconds double precision)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _servers name[];
    _remotes text[];
    _conns text[];
    _running boolean[];
    _results jsonb[];
    _n int;
    _any boolean;
    _failed text[];
BEGIN
    IF tbl IS NULL OR image_column IS NULL OR feature_column IS NULL OR model IS NULL OR retry_errors IS NULL THEN
        RAISE EXCEPTION 'tbl, image_column, feature_column, model and retry_errors must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM pgvision._check_batch_size(batch_size);
    PERFORM pgvision._dblink();
    IF NOT pgvision._is_sharded(tbl) THEN
        RAISE EXCEPTION '% is not a sharded table', tbl USING ERRCODE = 'wrong_object_type',
            HINT = 'CALL pgvision.embed_table backfills a table of this server; pgvision.create_sharded_table places one on shards';
    END IF;
    PERFORM pgvision._embed_columns(tbl, image_column, feature_column, model);
    PERFORM pgvision.set_column_model(tbl, feature_column, model);
    SELECT pg_catalog.array_agg(st.server ORDER BY st.server), pg_catalog.array_agg(st.remote_table ORDER BY st.server)
    INTO _servers, _remotes FROM pgvision._shard_tables(tbl) st;
    _n := pg_catalog.cardinality(_servers);
    _conns := ARRAY(SELECT 'pgvision_embed_shards_' || i FROM pg_catalog.generate_series(1, _n) i);
    _results := pg_catalog.array_fill(NULL::jsonb, ARRAY[_n]);
    _running := pg_catalog.array_fill(false, ARRAY[_n]);
    BEGIN
        -- Start every shard; one that cannot start is reported at the end, the others go on.
        FOR i IN 1 .. _n LOOP
            _results[i] := pgvision._embed_shard(true, _conns[i], _servers[i], _remotes[i], image_column,
                                                 feature_column, model, batch_size, retry_errors);
            _running[i] := _results[i] IS NULL;
        END LOOP;
        -- Wait for them, polling so that a cancel of this query is noticed.
        LOOP
            _any := false;
            FOR i IN 1 .. _n LOOP
                CONTINUE WHEN NOT _running[i];
                IF pgvision._dblink_call('is_busy', _conns[i])::int = 1 THEN
                    _any := true;
                    CONTINUE;
                END IF;
                _running[i] := false;
                _results[i] := pgvision._embed_shard(false, _conns[i], _servers[i], _remotes[i], image_column,
                                                     feature_column, model, batch_size, retry_errors);
            END LOOP;
            EXIT WHEN NOT _any;
            PERFORM pg_catalog.pg_sleep(0.1);
        END LOOP;
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        PERFORM pgvision._dblink_close(_conns, _running);
        RAISE;
    END;
    PERFORM pgvision._dblink_close(_conns, NULL);

    _failed := ARRAY(SELECT pg_catalog.format('shard "%s": %s', _servers[i], _results[i] ->> 'error')
                     FROM pg_catalog.generate_series(1, _n) i WHERE _results[i] ? 'error' ORDER BY i);
    IF pg_catalog.cardinality(_failed) > 0 THEN
        RAISE EXCEPTION 'backfill of % failed on % of % shards', tbl, pg_catalog.cardinality(_failed), _n
            USING ERRCODE = (SELECT _results[i] ->> 'state' FROM pg_catalog.generate_series(1, _n) i
                             WHERE _results[i] ? 'error' ORDER BY i LIMIT 1),
                  DETAIL = pg_catalog.array_to_string(_failed, E'\n'),
                  HINT = 'the other shards finished, and every batch a shard committed stays: run pgvision.embed_shards again to continue';
    END IF;
    RETURN QUERY SELECT _servers[i], (_results[i] ->> 'rows_done')::bigint, (_results[i] ->> 'errors')::bigint,
                        (_results[i] ->> 'null_images')::bigint, (_results[i] ->> 'seconds')::float8
                 FROM pg_catalog.generate_series(1, _n) i ORDER BY i;
END
$$;
COMMENT ON FUNCTION pgvision.embed_shards(regclass, name, name, text, int, boolean) IS
'fills the NULL features of a sharded table with model, recorded for the feature column (pgvision.set_column_model), on all its shards at once: CALL pgvision.embed_table on each (batch by batch, committing each batch there), returning per shard the rows embedded, rows that failed (see pgvision.backfill_errors on the shard), rows without image and seconds; if a shard fails, the others finish and an error names it; run it again to continue';

CREATE OR REPLACE FUNCTION pgvision.shard_backfill_progress(tbl regclass)
RETURNS TABLE (shard name, feature_column name, rows_done bigint, rows_left bigint, errors bigint,
               null_images bigint, rate double precision, started timestamptz, updated timestamptz,
               finished timestamptz)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _t record;
BEGIN
    IF NOT pgvision._is_sharded(tbl) THEN
        RAISE EXCEPTION '% is not a sharded table', tbl USING ERRCODE = 'wrong_object_type',
            HINT = 'pgvision.backfill_progress shows the backfills of this server''s tables';
    END IF;
    FOR _t IN SELECT st.server, st.remote_table FROM pgvision._shard_tables(tbl) st LOOP
        RETURN QUERY
        SELECT _t.server, (j ->> 'feature_column')::name, (j ->> 'rows_done')::bigint, (j ->> 'rows_left')::bigint,
               (j ->> 'errors')::bigint, (j ->> 'null_images')::bigint, (j ->> 'rate')::float8,
               (j ->> 'started')::timestamptz, (j ->> 'updated')::timestamptz, (j ->> 'finished')::timestamptz
        FROM pgvision._shard_json(_t.server, pg_catalog.format(
            'SELECT p.feature_column, p.rows_done, p.rows_left, p.errors, p.null_images, p.rate, p.started,'
            ' p.updated, p.finished FROM pgvision.backfill_progress p WHERE p.tbl OPERATOR(pg_catalog.=) %L::pg_catalog.regclass',
            _t.remote_table)) AS j;
    END LOOP;
END
$$;
COMMENT ON FUNCTION pgvision.shard_backfill_progress(regclass) IS
'pgvision.backfill_progress of a sharded table, read from each shard: one row per shard and feature column';
