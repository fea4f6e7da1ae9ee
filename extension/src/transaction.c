/*
 * Whether the procedure that calls this may COMMIT.
 *
 * pgvision.embed_table commits after every batch, which PostgreSQL refuses (2D000) inside a
 * transaction block and when the CALL comes from a function (an atomic context); without a
 * check up front the refusal comes only after the first batch's work and NOTICE. PL/pgSQL
 * cannot see either state: the SPI connection of the calling procedure knows.
 */
#include "postgres.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"

PG_FUNCTION_INFO_V1(pgvision_transaction_context);

/*
 * NULL when the calling PL/pgSQL procedure may COMMIT; otherwise why not, as the end of
 * "<procedure> cannot ...": "run inside a transaction block" (BEGIN ... CALL) or "be called
 * from a function" (the CALL comes from a function, or from a procedure that could not
 * commit either). A procedure called inside a transaction block runs atomic too, so the
 * transaction block is asked about first.
 */
Datum
pgvision_transaction_context(PG_FUNCTION_ARGS)
{
	if (IsTransactionBlock())
		PG_RETURN_TEXT_P(cstring_to_text("run inside a transaction block"));
	if (!SPI_inside_nonatomic_context())
		PG_RETURN_TEXT_P(cstring_to_text("be called from a function"));
	PG_RETURN_NULL();
}
