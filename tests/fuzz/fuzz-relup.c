/* fuzz-relup: a stored relup (relup_parse: YAML or JSON, both scripts
 * checked). A relup that parses must survive what reld does with it: its
 * JSON shape (relup_to_json), each instruction as a line for people
 * (relup_instr_format), and the round trip through store_write_relup's
 * text (json_dumps with JSON_INDENT(2) | JSON_PRESERVE_ORDER), which must
 * parse again to the same JSON. */
#include <stdlib.h>
#include <string.h>

#include "fuzz-diag.h"
#include "relup.h"

static void format_all(const RelupScript *s)
{
    for (size_t i = 0; i < s->n; i++) {
        char *line = relup_instr_format(&s->v[i]);
        FUZZ_ASSERT(line && *line, "instruction %zu formats to nothing", i);
        free(line);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Diag diag = {0};
    Relup *r = NULL;
    int rc = relup_parse("releases/2.0/relup.yaml", (const char *)data, size, &r, &diag);
    fuzz_print_diag("relup_parse", rc, &diag);
    FUZZ_ASSERT((rc == 0) == (r != NULL), "relup_parse returned %d with relup %p", rc, (void *)r);
    FUZZ_ASSERT(rc == 0 || diag_n_errors(&diag) > 0, "relup_parse failed (%d) without saying why", rc);
    diag_clear(&diag);
    if (!r)
        return 0;
    format_all(&r->up);
    format_all(&r->down);
    json_t *j = relup_to_json(r);
    FUZZ_ASSERT(j, "relup_to_json of a parsed relup gave NULL");
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    FUZZ_ASSERT(text, "json_dumps of a parsed relup gave NULL (store_write_relup would crash)");
    Relup *again = NULL;
    rc = relup_parse("releases/2.0/relup.yaml", text, strlen(text), &again, &diag);
    FUZZ_ASSERT(rc == 0, "a relup written as reld writes it does not parse again: %s\n%s",
                diag.errors.n ? diag.errors.v[0] : "?", text);
    json_t *j2 = relup_to_json(again);
    char *text2 = json_dumps(j2, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    FUZZ_ASSERT(json_equal(j, j2), "a relup read back differs:\n%s\n--- read back as\n%s", text,
                text2 ? text2 : "(null)");
    free(text2);
    json_decref(j2);
    relup_free(again);
    free(text);
    json_decref(j);
    relup_free(r);
    diag_clear(&diag);
    return 0;
}
