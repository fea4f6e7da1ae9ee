-- Classification with the model's logits output.

CREATE OR REPLACE FUNCTION pgvision.classify(image bytea, k int DEFAULT 5,
                                             model text DEFAULT 'efficientnet_lite0')
RETURNS TABLE (label text, score real)
LANGUAGE plpython3u STABLE STRICT PARALLEL UNSAFE COST 100000 ROWS 5
SET search_path = pg_catalog, pg_temp
AS $python$
@PREAMBLE@
return pv.classify(plpy, GD, image, k, model)
$python$;
COMMENT ON FUNCTION pgvision.classify(bytea, int, text) IS
'the k most likely classes of an image (ImageNet-1k for the default model), with softmax probabilities, most likely first';
