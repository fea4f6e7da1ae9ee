/*
 * pgvision's settings, defined when pgvision.so loads.
 *
 * Defined settings have types, bounds and a context: PostgreSQL checks a value when it is
 * set, shows it in pg_settings, takes it in ALTER SYSTEM, and refuses a superuser-only one
 * to any other role, also when the role had set it before the library was loaded (the
 * placeholder's value is then dropped with a warning).
 *
 * Every resource setting an ordinary role may change has a superuser-only ceiling named
 * after it with "_limit": a role can lower what it spends, never raise it past what the
 * administrator allows.  SET above the ceiling is an error; a value that came from
 * elsewhere (ALTER ROLE, a lowered ceiling) is cut to the ceiling where it is used.
 *
 * The folder the runtime's Python code is imported from is set only where the server's
 * administrator writes (postgresql.conf, ALTER SYSTEM, the command line): it decides which
 * code the server runs, as dynamic_library_path does.
 */
#include "postgres.h"

#include <limits.h>
#include <unistd.h>

#include "fmgr.h"
#include "utils/guc.h"
#include "utils/memutils.h"

#ifndef PGVISION_RUNTIME_PATH
#error "PGVISION_RUNTIME_PATH must name the runtime folder (the Makefile sets it)"
#endif

/* bytea values cannot be larger than this */
#define MAX_BYTEA ((int) (MaxAllocSize - VARHDRSZ))
#define MAX_THREADS 1024
#define MAX_BATCH 4096

static char *runtime_path = NULL;
static int	threads = 0;
static int	threads_limit = 0;
static int	batch_size = 32;
static int	batch_size_limit = 64;
static int	max_pixels = 50000000;
static int	max_pixels_limit = 50000000;
static int	max_image_bytes = 64 * 1024 * 1024;
static int	max_image_bytes_limit = 64 * 1024 * 1024;
static int	max_model_bytes = 1024 * 1024 * 1024;
static bool share_models = true;
static bool keep_batch_memory = false;
static bool partial_results = false;

void		_PG_init(void);

/*
 * A check hook for "name <= name_limit": only SET and its kin (SET LOCAL, a function's SET
 * clause) are refused, since the ceiling may not be known yet while postgresql.conf or a
 * role's settings are read, and the use site cuts those anyway.
 */
static bool
below_limit(int value, int limit, const char *name, GucSource source)
{
	if (source < PGC_S_INTERACTIVE || limit <= 0 || value <= limit)
		return true;
	GUC_check_errcode(ERRCODE_INVALID_PARAMETER_VALUE);
	GUC_check_errmsg("%s cannot be larger than %s_limit (%d)", name, name, limit);
	GUC_check_errhint("a superuser sets %s_limit", name);
	return false;
}

static int
cpus(void)
{
	long		n = sysconf(_SC_NPROCESSORS_ONLN);

	return n > 0 ? (int) Min(n, MAX_THREADS) : 1;
}

static bool
check_threads(int *newval, void **extra, GucSource source)
{
	int			limit = threads_limit > 0 ? threads_limit : cpus();

	/* 0 means as many as allowed, which never exceeds the ceiling */
	return *newval == 0 || below_limit(*newval, limit, "pgvision.threads", source);
}

static bool
check_batch_size(int *newval, void **extra, GucSource source)
{
	return below_limit(*newval, batch_size_limit, "pgvision.batch_size", source);
}

static bool
check_max_pixels(int *newval, void **extra, GucSource source)
{
	return below_limit(*newval, max_pixels_limit, "pgvision.max_pixels", source);
}

static bool
check_max_image_bytes(int *newval, void **extra, GucSource source)
{
	return below_limit(*newval, max_image_bytes_limit, "pgvision.max_image_bytes", source);
}

static bool
check_runtime_path(char **newval, void **extra, GucSource source)
{
	if (*newval == NULL || (*newval)[0] != '/')
	{
		GUC_check_errmsg("pgvision.runtime_path must be an absolute path");
		return false;
	}
	return true;
}

void
_PG_init(void)
{
	DefineCustomStringVariable("pgvision.runtime_path",
							   "Folder of the Python runtime pgvision's functions import.",
							   "Its venv/lib/pythonX.Y/site-packages goes on sys.path once per backend; "
							   "every folder from / down must belong to root or the server's user "
							   "and be closed to others' writes.",
							   &runtime_path, PGVISION_RUNTIME_PATH, PGC_SIGHUP, 0,
							   check_runtime_path, NULL, NULL);

	DefineCustomIntVariable("pgvision.threads",
							"Threads one model call and one batch's decoding use.",
							"0 means as many as pgvision.threads_limit allows.",
							&threads, 0, 0, MAX_THREADS, PGC_USERSET, 0,
							check_threads, NULL, NULL);
	DefineCustomIntVariable("pgvision.threads_limit",
							"Most threads any role's pgvision.threads may ask for.",
							"0 means the number of CPUs online.",
							&threads_limit, 0, 0, MAX_THREADS, PGC_SUSET, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("pgvision.batch_size",
							"Images per model call in embed_batch and embed_table.",
							"Each image of a batch holds the model's activations (several MB).",
							&batch_size, 32, 1, MAX_BATCH, PGC_USERSET, 0,
							check_batch_size, NULL, NULL);
	DefineCustomIntVariable("pgvision.batch_size_limit",
							"Most images per model call any role's pgvision.batch_size may ask for.",
							NULL,
							&batch_size_limit, 64, 1, MAX_BATCH, PGC_SUSET, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("pgvision.max_pixels",
							"Largest image, in pixels, pgvision decodes.",
							"Decoding an image takes memory in proportion to its pixels.",
							&max_pixels, 50000000, 1, INT_MAX, PGC_USERSET, 0,
							check_max_pixels, NULL, NULL);
	DefineCustomIntVariable("pgvision.max_pixels_limit",
							"Most pixels any role's pgvision.max_pixels may allow.",
							NULL,
							&max_pixels_limit, 50000000, 1, INT_MAX, PGC_SUSET, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("pgvision.max_image_bytes",
							"Largest image file, in bytes, pgvision decodes.",
							NULL,
							&max_image_bytes, 64 * 1024 * 1024, 1, MAX_BYTEA, PGC_USERSET, 0,
							check_max_image_bytes, NULL, NULL);
	DefineCustomIntVariable("pgvision.max_image_bytes_limit",
							"Most bytes any role's pgvision.max_image_bytes may allow.",
							NULL,
							&max_image_bytes_limit, 64 * 1024 * 1024, 1, MAX_BYTEA, PGC_SUSET, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("pgvision.max_model_bytes",
							"Largest ONNX model, in bytes, pgvision registers or loads.",
							NULL,
							&max_model_bytes, 1024 * 1024 * 1024, 1, MAX_BYTEA, PGC_SUSET, 0,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("pgvision.share_models",
							 "Backends open models from one shared copy of their weights.",
							 "Off: each backend loads its own copy from the registry.",
							 &share_models, true, PGC_SUSET, 0,
							 NULL, NULL, NULL);
	DefineCustomBoolVariable("pgvision.keep_batch_memory",
							 "embed_batch keeps the model's activation memory for the next call.",
							 NULL,
							 &keep_batch_memory, false, PGC_USERSET, 0,
							 NULL, NULL, NULL);
	DefineCustomBoolVariable("pgvision.partial_results",
							 "A sharded search leaves out shards it cannot reach, with a warning.",
							 NULL,
							 &partial_results, false, PGC_USERSET, 0,
							 NULL, NULL, NULL);

	MarkGUCPrefixReserved("pgvision");
}

PG_FUNCTION_INFO_V1(pgvision_load);

/*
 * Does nothing: calling it loads pgvision.so, so that the settings above are defined (and
 * any placeholder a role set before is checked) before the runtime reads them.
 */
Datum
pgvision_load(PG_FUNCTION_ARGS)
{
	PG_RETURN_VOID();
}
