/*
 * The one piece of pgvision in C: a feature goes from the runtime to a pgvector value as
 * its float32 bytes.
 *
 * PL/Python hands any result that is not bytea (or bool) to the type's text input, so a
 * 1280-d vector returned from Python costs formatting 1280 floats as text and pgvector
 * parsing them again, about a tenth of a thumbnail's whole embedding time. The runtime
 * returns the array's bytes instead, and this copies them into a vector.
 */
#include "postgres.h"

#include <math.h>

#include "fmgr.h"
#include "extension/vector/vector.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(pgvision_vector_from_float4);

Datum
pgvision_vector_from_float4(PG_FUNCTION_ARGS)
{
	bytea	   *data = PG_GETARG_BYTEA_PP(0);
	Size		len = VARSIZE_ANY_EXHDR(data);
	const char *bytes = VARDATA_ANY(data);
	int			dim;
	Vector	   *result;

	if (len % sizeof(float) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("expected a multiple of %d bytes of float4 values, not %zu bytes",
						(int) sizeof(float), len)));
	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("vector must have at least 1 dimension")));
	if (len / sizeof(float) > VECTOR_MAX_DIM)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("vector cannot have more than %d dimensions", VECTOR_MAX_DIM)));
	dim = (int) (len / sizeof(float));

	result = (Vector *) palloc0(VECTOR_SIZE(dim));
	SET_VARSIZE(result, VECTOR_SIZE(dim));
	result->dim = dim;
	memcpy(result->x, bytes, len);
	/* the same promise as pgvector's text input: no NaN, no infinity */
	for (int i = 0; i < dim; i++)
	{
		if (isnan(result->x[i]))
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("NaN not allowed in vector")));
		if (isinf(result->x[i]))
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("infinite value not allowed in vector")));
	}
	PG_FREE_IF_COPY(data, 0);
	PG_RETURN_POINTER(result);
}
