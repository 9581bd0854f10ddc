/* The relup engine: OTP's systools_relup (which appup scripts, in which
 * order) and systools_rc (how high-level instructions become low-level
 * ones). Function names follow OTP's where they do the same job, so the two
 * can be read side by side. */
#include "relup.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>

static const char *const op_names[RELUP_N_OPS] = {
    [RELUP_LOAD_OBJECT_CODE] = "load_object_code",
    [RELUP_POINT_OF_NO_RETURN] = "point_of_no_return",
    [RELUP_SUSPEND] = "suspend",
    [RELUP_LOAD] = "load",
    [RELUP_CODE_CHANGE] = "code_change",
    [RELUP_RESUME] = "resume",
    [RELUP_PURGE] = "purge",
    [RELUP_REMOVE] = "remove",
    [RELUP_STOP] = "stop",
    [RELUP_START] = "start",
    [RELUP_START_APPLICATION] = "start_application",
    [RELUP_STOP_APPLICATION] = "stop_application",
    [RELUP_UNLOAD_APPLICATION] = "unload_application",
};

const char *relup_op_name(RelupOp op)
{
    return op < RELUP_N_OPS ? op_names[op] : "?";
}

/* An item of the script being translated: either a high-level dependent
 * instruction (update, load_module, add_module, delete_module), borrowed
 * from an appup or synthesized, or a finished low-level instruction. */
typedef struct Work {
    const AppupInstr *hl; /* NULL for a low-level item */
    RelupInstr low;
} Work;

typedef struct Ctx {
    bool up;
    const ReleaseDef *from, *to; /* this direction's from and to */
    const char *what;            /* "relup 1.0 -> 2.0 (up)" for messages */
    const RelupOptions *opts;
    Diag *diag;
    Work *work;
    size_t n_work, cap_work;
    AppupInstr **synth; /* instructions we made up; owned */
    size_t n_synth, cap_synth;
} Ctx;

void relup_instr_clear(RelupInstr *i)
{
    free(i->app);
    free(i->vsn);
    free(i->module);
    for (size_t k = 0; k < i->n_mods; k++) {
        free(i->mods[k].module);
        json_decref(i->mods[k].extra);
    }
    free(i->mods);
    *i = (RelupInstr){0};
}

void relup_script_clear(RelupScript *s)
{
    for (size_t i = 0; i < s->n; i++)
        relup_instr_clear(&s->v[i]);
    free(s->v);
    *s = (RelupScript){0};
}

Relup *relup_free(Relup *r)
{
    if (!r)
        return NULL;
    free(r->from);
    free(r->to);
    relup_script_clear(&r->up);
    relup_script_clear(&r->down);
    free(r);
    return NULL;
}

static void push_mod(RelupInstr *i, const char *module, long timeout, json_t *extra)
{
    /* Room doubles when n_mods reaches a power of two (every mods array
     * here is built by push_mod from empty): a realloc per module was a
     * tenth of computing a relup of 20-module applications. */
    if ((i->n_mods & (i->n_mods - 1)) == 0)
        i->mods = xrealloc(i->mods, (i->n_mods ? 2 * i->n_mods : 1) * sizeof(*i->mods));
    i->mods[i->n_mods++] =
        (RelupModule){.module = xstrdup(module), .timeout_ms = timeout, .extra = extra ? json_incref(extra) : NULL};
}

static void script_push(RelupScript *s, RelupInstr i)
{
    GROW(s->v, s->cap, s->n + 1);
    s->v[s->n++] = i;
}

static void push_low(Ctx *c, RelupInstr i)
{
    GROW(c->work, c->cap_work, c->n_work + 1);
    c->work[c->n_work++] = (Work){.low = i};
}

static void push_hl(Ctx *c, const AppupInstr *hl)
{
    GROW(c->work, c->cap_work, c->n_work + 1);
    c->work[c->n_work++] = (Work){.hl = hl};
}

static AppupInstr *synth(Ctx *c, AppupOp op, const char *target)
{
    AppupInstr *i = xcalloc(1, sizeof(*i));
    i->op = op;
    i->target = xstrdup(target);
    GROW(c->synth, c->cap_synth, c->n_synth + 1);
    c->synth[c->n_synth++] = i;
    return i;
}

static RelupInstr low_app(RelupOp op, const char *app)
{
    return (RelupInstr){.op = op, .app = xstrdup(app)};
}

static void pos_str(char *buf, size_t n, const SrcPos *p)
{
    if (p->file && p->line)
        snprintf(buf, n, " (%s:%d:%d)", p->file, p->line, p->col);
    else
        buf[0] = 0;
}

/* ---- systools_rc:translate_application_instrs, add_module ------------- */

static const AppDef *app_of(const ReleaseDef *rel, const char *name)
{
    const ReleaseAppRef *r = appdefs_release_find(rel, name);
    return r ? r->app : NULL;
}

static void expand_instr(Ctx *c, const AppupInstr *in)
{
    char where[512] = "";
    bool app_op =
        in->op == APPUP_ADD_APPLICATION || in->op == APPUP_REMOVE_APPLICATION || in->op == APPUP_RESTART_APPLICATION;
    const AppDef *pre = app_op ? app_of(c->from, in->target) : NULL;
    const AppDef *post = app_op ? app_of(c->to, in->target) : NULL;

    if (app_op) /* only these can fail here; formatting costs in large releases */
        pos_str(where, sizeof(where), &in->pos);
    switch (in->op) {
    case APPUP_UPDATE:
    case APPUP_LOAD_MODULE:
    case APPUP_ADD_MODULE:
    case APPUP_DELETE_MODULE:
        push_hl(c, in);
        return;
    case APPUP_ADD_APPLICATION:
        if (!post) {
            diag_error(c->diag, "%s: add_application of '%s', which release %s does not include%s", c->what, in->target,
                       c->to->vsn, where);
            return;
        }
        for (size_t m = 0; m < post->n_modules; m++)
            push_hl(c, synth(c, APPUP_ADD_MODULE, post->modules[m].name));
        push_low(c, low_app(RELUP_START_APPLICATION, in->target));
        return;
    case APPUP_REMOVE_APPLICATION:
    case APPUP_RESTART_APPLICATION:
        if (in->op == APPUP_REMOVE_APPLICATION && post) {
            diag_error(c->diag, "%s: remove_application of '%s', which release %s still includes%s", c->what,
                       in->target, c->to->vsn, where);
            return;
        }
        if (!pre || (in->op == APPUP_RESTART_APPLICATION && !post)) {
            diag_error(c->diag, "%s: %s of '%s', which release %s does not include%s", c->what, appup_op_name(in->op),
                       in->target, pre ? c->to->vsn : c->from->vsn, where);
            return;
        }
        push_low(c, low_app(RELUP_STOP_APPLICATION, in->target));
        RelupInstr purge = {.op = RELUP_PURGE};
        for (size_t m = 0; m < pre->n_modules; m++) {
            push_low(c, (RelupInstr){.op = RELUP_REMOVE, .module = xstrdup(pre->modules[m].name)});
            push_mod(&purge, pre->modules[m].name, 0, NULL);
        }
        push_low(c, purge);
        if (in->op == APPUP_REMOVE_APPLICATION) {
            push_low(c, low_app(RELUP_UNLOAD_APPLICATION, in->target));
        } else {
            for (size_t m = 0; m < post->n_modules; m++)
                push_hl(c, synth(c, APPUP_ADD_MODULE, post->modules[m].name));
            push_low(c, low_app(RELUP_START_APPLICATION, in->target));
        }
        return;
    case APPUP_RESTART: {
        RelupInstr stop = {.op = RELUP_STOP}, start = {.op = RELUP_START};
        for (size_t m = 0; m < in->modules.n; m++) {
            push_mod(&stop, in->modules.v[m], 0, NULL);
            push_mod(&start, in->modules.v[m], 0, NULL);
        }
        push_low(c, stop);
        push_low(c, start);
        return;
    }
    }
}

/* ---- derived appup entries -------------------------------------------- */

/* Adds one derived instruction to the script and to the list the warning
 * shows. A derived update converts state with {advanced: null}. */
static void add_derived(Ctx *c, AppupOp op, const char *module, char **list)
{
    AppupInstr *i = synth(c, op, module);
    if (op == APPUP_UPDATE) {
        i->advanced = true;
        i->extra = json_null();
    }
    push_hl(c, i);
    char *l = xasprintf("%s%s%s %s%s", *list, **list ? "; " : "", appup_op_name(op), module,
                        op == APPUP_UPDATE ? " {advanced: null}" : "");
    free(*list);
    *list = l;
}

static bool derive_entry(Ctx *c, const AppDef *old_app, const AppDef *new_app)
{
    const char *dir = c->up ? "up from" : "down to";
    const char *other = c->up ? old_app->vsn : new_app->vsn;
    const AppDef *holder = c->up ? new_app : old_app;
    if (!c->opts || !c->opts->derive_missing || !c->opts->module_changed) {
        diag_error(c->diag, "%s: %s has no appup entry for %s %s", c->what, holder->file, dir, other);
        return false;
    }
    char *list = xstrdup("");
    for (size_t m = 0; m < new_app->n_modules; m++) {
        const char *mod = new_app->modules[m].name;
        if (!appdefs_app_find_module(old_app, mod)) {
            add_derived(c, APPUP_ADD_MODULE, mod, &list);
            continue;
        }
        int changed = c->opts->module_changed(c->opts->userdata, old_app, new_app, mod);
        if (changed < 0) {
            diag_error(c->diag, "%s: cannot compare module '%s' of %s %s and %s: %s", c->what, mod, new_app->name,
                       old_app->vsn, new_app->vsn, strerror(-changed));
            free(list);
            return false;
        }
        if (!changed)
            continue;
        if (appdefs_app_runs_module(new_app, mod) || appdefs_app_runs_module(old_app, mod))
            add_derived(c, APPUP_UPDATE, mod, &list);
        else
            add_derived(c, APPUP_LOAD_MODULE, mod, &list);
    }
    for (size_t m = 0; m < old_app->n_modules; m++)
        if (!appdefs_app_find_module(new_app, old_app->modules[m].name))
            add_derived(c, APPUP_DELETE_MODULE, old_app->modules[m].name, &list);
    diag_warning(c->diag, "%s: %s has no appup entry for %s %s; derived: %s", c->what, holder->file, dir, other,
                 *list ? list : "(nothing changed)");
    free(list);
    return true;
}

/* ---- systools_relup: which scripts, in which order ------------------- */

static void collect_scripts(Ctx *c)
{
    size_t *from_order = appdefs_release_order(c->from);
    size_t *to_order = appdefs_release_order(c->to);

    /* Removed applications first, dependents before their dependencies. */
    for (size_t k = c->from->n_apps; k-- > 0;) {
        const ReleaseAppRef *r = &c->from->apps[from_order[k]];
        if (!appdefs_release_find(c->to, r->name))
            expand_instr(c, synth(c, APPUP_REMOVE_APPLICATION, r->name));
    }
    for (size_t k = 0; k < c->to->n_apps; k++) {
        const ReleaseAppRef *r = &c->to->apps[to_order[k]];
        const ReleaseAppRef *old = appdefs_release_find(c->from, r->name);
        if (!old) {
            expand_instr(c, synth(c, APPUP_ADD_APPLICATION, r->name));
            continue;
        }
        if (strcmp(old->vsn, r->vsn) == 0)
            continue;
        /* The newer version's appup holds both directions. */
        const AppDef *holder = c->up ? r->app : old->app;
        const char *other = c->up ? old->vsn : r->vsn;
        const AppupEntry *e = appdefs_appup_find(c->up ? &holder->up : &holder->down, other);
        if (!e) {
            derive_entry(c, old->app, r->app);
            continue;
        }
        for (size_t i = 0; i < e->n_instrs; i++)
            expand_instr(c, &e->instrs[i]);
    }
    free(from_order);
    free(to_order);
}

/* ---- systools_rc:translate_dependent_instrs --------------------------- */

typedef struct Graph {
    size_t n;     /* vertices: the dependent instructions, in order */
    size_t *work; /* vertex -> index into Ctx.work */
    size_t **out; /* vertex -> its dep_mods as vertices */
    size_t *n_out;
    size_t *wc;  /* vertex -> weak component (union-find root) */
    size_t *scc; /* vertex -> strong component id */
    size_t n_scc;
} Graph;

static size_t uf_find(size_t *p, size_t x)
{
    while (p[x] != x)
        x = p[x] = p[p[x]];
    return x;
}

/* Tarjan's algorithm, iterative so that a 20,000-module chain cannot
 * overflow the stack. */
static void strong_components(Graph *g)
{
    size_t n = g->n, idx = 0, sp = 0, cp = 0;
    size_t *index = xmalloc((n + 1) * sizeof(size_t)), *low = xmalloc((n + 1) * sizeof(size_t));
    size_t *stack = xmalloc((n + 1) * sizeof(size_t)), *call = xmalloc((n + 1) * sizeof(size_t));
    size_t *edge = xcalloc(n + 1, sizeof(size_t));
    bool *on = xcalloc(n + 1, sizeof(bool));
    const size_t UNSEEN = (size_t)-1;
    for (size_t v = 0; v < n; v++)
        index[v] = UNSEEN;
    g->scc = xmalloc((n + 1) * sizeof(size_t));
    g->n_scc = 0;
    for (size_t root = 0; root < n; root++) {
        if (index[root] != UNSEEN)
            continue;
        call[cp++] = root;
        index[root] = low[root] = idx++;
        stack[sp++] = root;
        on[root] = true;
        while (cp) {
            size_t v = call[cp - 1];
            if (edge[v] < g->n_out[v]) {
                size_t w = g->out[v][edge[v]++];
                if (index[w] == UNSEEN) {
                    index[w] = low[w] = idx++;
                    stack[sp++] = w;
                    on[w] = true;
                    call[cp++] = w;
                } else if (on[w] && index[w] < low[v]) {
                    low[v] = index[w];
                }
                continue;
            }
            cp--;
            if (cp && low[v] < low[call[cp - 1]])
                low[call[cp - 1]] = low[v];
            if (low[v] == index[v]) {
                size_t w;
                do {
                    w = stack[--sp];
                    on[w] = false;
                    g->scc[w] = g->n_scc;
                } while (w != v);
                g->n_scc++;
            }
        }
    }
    free(index);
    free(low);
    free(stack);
    free(call);
    free(edge);
    free(on);
}

/* A binary min-heap of strong components keyed by their first vertex, so
 * that where dependencies leave the order open, appup order decides. */
typedef struct Heap {
    size_t *v, n;
    const size_t *key;
} Heap;

static void heap_push(Heap *h, size_t x)
{
    size_t i = h->n++;
    h->v[i] = x;
    while (i && h->key[h->v[(i - 1) / 2]] > h->key[h->v[i]]) {
        size_t p = (i - 1) / 2, t = h->v[p];
        h->v[p] = h->v[i];
        h->v[i] = t;
        i = p;
    }
}

static size_t heap_pop(Heap *h)
{
    size_t top = h->v[0];
    h->v[0] = h->v[--h->n];
    for (size_t i = 0;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < h->n && h->key[h->v[l]] < h->key[h->v[m]])
            m = l;
        if (r < h->n && h->key[h->v[r]] < h->key[h->v[m]])
            m = r;
        if (m == i)
            break;
        size_t t = h->v[m];
        h->v[m] = h->v[i];
        h->v[i] = t;
        i = m;
    }
    return top;
}

static bool build_graph(Ctx *c, Graph *g, StrMap *vertex_of)
{
    bool ok = true;
    g->work = xmalloc((c->n_work + 1) * sizeof(size_t));
    for (size_t w = 0; w < c->n_work; w++) {
        const AppupInstr *hl = c->work[w].hl;
        if (!hl)
            continue;
        size_t prev;
        if (strmap_get(vertex_of, hl->target, &prev)) {
            char a[512], b[512];
            pos_str(a, sizeof(a), &c->work[g->work[prev]].hl->pos);
            pos_str(b, sizeof(b), &hl->pos);
            diag_error(c->diag, "%s: module '%s' has more than one instruction:%s and%s", c->what, hl->target,
                       *a ? a : " (derived)", *b ? b : " (derived)");
            ok = false;
            continue;
        }
        strmap_put(vertex_of, hl->target, g->n);
        g->work[g->n++] = w;
    }
    g->out = xcalloc(g->n + 1, sizeof(size_t *));
    g->n_out = xcalloc(g->n + 1, sizeof(size_t));
    g->wc = xmalloc((g->n + 1) * sizeof(size_t));
    for (size_t v = 0; v < g->n; v++)
        g->wc[v] = v;
    for (size_t v = 0; v < g->n; v++) {
        const AppupInstr *hl = c->work[g->work[v]].hl;
        g->out[v] = xmalloc((hl->dep_mods.n + 1) * sizeof(size_t));
        for (size_t d = 0; d < hl->dep_mods.n; d++) {
            size_t t;
            if (!strmap_get(vertex_of, hl->dep_mods.v[d], &t)) {
                char a[512];
                pos_str(a, sizeof(a), &hl->pos);
                diag_error(c->diag, "%s: %s of '%s' names '%s' in dep_mods, but '%s' has no instruction of its own%s",
                           c->what, appup_op_name(hl->op), hl->target, hl->dep_mods.v[d], hl->dep_mods.v[d], a);
                ok = false;
                continue;
            }
            g->out[v][g->n_out[v]++] = t;
            g->wc[uf_find(g->wc, v)] = uf_find(g->wc, t);
        }
    }
    for (size_t v = 0; v < g->n; v++)
        g->wc[v] = uf_find(g->wc, v);
    return ok;
}

static void graph_free(Graph *g)
{
    for (size_t v = 0; v < g->n; v++)
        free(g->out[v]);
    free(g->out);
    free(g->n_out);
    free(g->wc);
    free(g->scc);
    free(g->work);
}

/* The vertices of weak component wc in OTP's order: strong components in
 * topological order of the condensation (a module before the modules it
 * depends on), vertices of one strong component in appup order. */
static size_t order_component(const Graph *g, const size_t *members, size_t n_members, size_t *scc_first, size_t *indeg,
                              size_t **scc_members, size_t *scc_n, size_t *out)
{
    /* Strong component ids of this weak component, their first vertex,
     * their member lists and the in-degrees of the condensation. */
    size_t *ids = xmalloc((n_members + 1) * sizeof(size_t)), n_ids = 0;
    for (size_t k = 0; k < n_members; k++) {
        size_t v = members[k], s = g->scc[v];
        if (scc_n[s] == 0) {
            ids[n_ids++] = s;
            scc_first[s] = v;
        }
        scc_members[s][scc_n[s]++] = v; /* members arrive in vertex order */
    }
    for (size_t k = 0; k < n_members; k++) {
        size_t v = members[k];
        for (size_t e = 0; e < g->n_out[v]; e++) {
            size_t t = g->out[v][e];
            if (g->scc[t] == g->scc[v])
                continue;
            /* One count per vertex edge; the loop below takes back exactly
             * as many, so parallel edges between two components are fine. */
            indeg[g->scc[t]]++;
        }
    }
    Heap h = {.v = xmalloc((n_ids + 1) * sizeof(size_t)), .key = scc_first};
    for (size_t k = 0; k < n_ids; k++)
        if (indeg[ids[k]] == 0)
            heap_push(&h, ids[k]);
    size_t n_out = 0;
    while (h.n) {
        size_t s = heap_pop(&h);
        for (size_t k = 0; k < scc_n[s]; k++)
            out[n_out++] = scc_members[s][k];
        for (size_t k = 0; k < scc_n[s]; k++) {
            size_t v = scc_members[s][k];
            for (size_t e = 0; e < g->n_out[v]; e++) {
                size_t t = g->out[v][e];
                if (g->scc[t] != s && --indeg[g->scc[t]] == 0)
                    heap_push(&h, g->scc[t]);
            }
        }
    }
    free(h.v);
    free(ids);
    return n_out;
}

/* systools_rc:translate_dep_to_low for one ordered group of dependent
 * instructions. Appends the low-level instructions to *after and the
 * load_object_code instructions to *before. */
static void translate_dep_to_low(Ctx *c, const AppupInstr *const *is, size_t n, RelupScript *before, RelupScript *after,
                                 const StrMap *app_of_module)
{
    RelupInstr suspend = {.op = RELUP_SUSPEND}, resume = {.op = RELUP_RESUME};
    RelupInstr pre_cc = {.op = RELUP_CODE_CHANGE, .down = true}, cc_up = {.op = RELUP_CODE_CHANGE};
    RelupScript load_remove = {0};
    size_t *first_of = xmalloc((n + 1) * sizeof(size_t)); /* first load_remove item of is[k] */

    for (size_t k = 0; k < n; k++)
        if (is[k]->op == APPUP_UPDATE)
            push_mod(&suspend, is[k]->target, is[k]->timeout_ms, NULL);
    for (size_t k = n; k-- > 0;)
        if (is[k]->op == APPUP_UPDATE)
            push_mod(&resume, is[k]->target, TIMEOUT_DEFAULT, NULL);
    for (size_t k = 0; k < n; k++) {
        const AppupInstr *i = is[k];
        first_of[k] = load_remove.n;
        if (i->op == APPUP_DELETE_MODULE) {
            script_push(&load_remove, (RelupInstr){.op = RELUP_REMOVE, .module = xstrdup(i->target)});
            RelupInstr purge = {.op = RELUP_PURGE};
            push_mod(&purge, i->target, 0, NULL);
            script_push(&load_remove, purge);
        } else {
            /* add_module is load_module with brutal purges (OTP: "the
             * module is new"); a synthesized instruction has the defaults. */
            script_push(&load_remove, (RelupInstr){.op = RELUP_LOAD,
                                                   .module = xstrdup(i->target),
                                                   .pre_purge = i->pre_purge,
                                                   .post_purge = i->post_purge});
        }
        if (i->op == APPUP_UPDATE && i->advanced) {
            push_mod(&cc_up, i->target, 0, i->extra);
            push_mod(&pre_cc, i->target, 0, i->extra);
        }
    }
    for (size_t k = 0; k < load_remove.n; k++) {
        RelupInstr *l = &load_remove.v[k];
        if (l->op != RELUP_LOAD)
            continue;
        size_t a;
        if (!strmap_get(app_of_module, l->module, &a)) {
            diag_error(c->diag, "%s: load of module '%s', which no application of release %s contains", c->what,
                       l->module, c->to->vsn);
            continue;
        }
        RelupInstr loc = {
            .op = RELUP_LOAD_OBJECT_CODE, .app = xstrdup(c->to->apps[a].name), .vsn = xstrdup(c->to->apps[a].vsn)};
        push_mod(&loc, l->module, 0, NULL);
        script_push(before, loc);
    }

    if (suspend.n_mods)
        script_push(after, suspend);
    else
        relup_instr_clear(&suspend);
    if (c->up) {
        /* Up: modules load in the reverse order of dependency, each
         * instruction's own items (remove, purge) in their order. */
        for (size_t k = n; k-- > 0;) {
            size_t end = k + 1 < n ? first_of[k + 1] : load_remove.n;
            for (size_t j = first_of[k]; j < end; j++)
                script_push(after, load_remove.v[j]);
        }
        if (cc_up.n_mods)
            script_push(after, cc_up);
        else
            relup_instr_clear(&cc_up);
        relup_instr_clear(&pre_cc);
    } else {
        /* Down: the state converts with the new code before the old code
         * loads, and modules load in the order of dependency. */
        if (pre_cc.n_mods)
            script_push(after, pre_cc);
        else
            relup_instr_clear(&pre_cc);
        for (size_t j = 0; j < load_remove.n; j++)
            script_push(after, load_remove.v[j]);
        relup_instr_clear(&cc_up);
    }
    free(load_remove.v); /* the items moved into *after */
    if (resume.n_mods)
        script_push(after, resume);
    else
        relup_instr_clear(&resume);
    free(first_of);
}

/* systools_rc:merge_load_object_code: one load_object_code per application,
 * at the place of its first, with the modules of all in order. */
static void merge_load_object_code(Ctx *c, RelupScript *before, RelupScript *merged)
{
    StrMap at = {0};
    for (size_t k = 0; k < before->n; k++) {
        RelupInstr *l = &before->v[k];
        size_t m;
        if (!strmap_get(&at, l->app, &m)) {
            script_push(merged, *l);
            strmap_put(&at, merged->v[merged->n - 1].app, merged->n - 1);
            *l = (RelupInstr){0};
            continue;
        }
        RelupInstr *into = &merged->v[m];
        if (strcmp(into->vsn, l->vsn) != 0)
            diag_error(c->diag, "%s: conflicting versions for application '%s': %s and %s", c->what, l->app, into->vsn,
                       l->vsn);
        for (size_t j = 0; j < l->n_mods; j++) {
            bool dup = false;
            for (size_t q = 0; q < into->n_mods; q++)
                dup = dup || strcmp(into->mods[q].module, l->mods[j].module) == 0;
            if (!dup)
                push_mod(into, l->mods[j].module, 0, NULL);
        }
        relup_instr_clear(l);
    }
    strmap_clear(&at);
    free(before->v);
    *before = (RelupScript){0};
}

static int translate(Ctx *c, RelupScript *out)
{
    StrMap vertex_of = {0}, app_of_module = {0};
    Graph g = {0};
    RelupScript before = {0}, after = {0};
    strmap_reserve(&vertex_of, c->n_work);
    bool ok = build_graph(c, &g, &vertex_of);
    size_t n_modules = 0;
    for (size_t a = 0; a < c->to->n_apps; a++)
        n_modules += c->to->apps[a].app ? c->to->apps[a].app->n_modules : 0;
    strmap_reserve(&app_of_module, n_modules);
    for (size_t a = 0; a < c->to->n_apps; a++) {
        const AppDef *app = c->to->apps[a].app;
        for (size_t m = 0; app && m < app->n_modules; m++)
            if (!strmap_get(&app_of_module, app->modules[m].name, NULL))
                strmap_put(&app_of_module, app->modules[m].name, a);
    }
    if (ok) {
        strong_components(&g);
        /* Members of every weak component, in vertex order. */
        size_t *wc_n = xcalloc(g.n + 1, sizeof(size_t)), *wc_start = xcalloc(g.n + 2, sizeof(size_t));
        size_t *members = xmalloc((g.n + 1) * sizeof(size_t));
        for (size_t v = 0; v < g.n; v++)
            wc_n[g.wc[v]]++;
        for (size_t w = 0; w < g.n; w++)
            wc_start[w + 1] = wc_start[w] + wc_n[w];
        memset(wc_n, 0, (g.n + 1) * sizeof(size_t));
        for (size_t v = 0; v < g.n; v++)
            members[wc_start[g.wc[v]] + wc_n[g.wc[v]]++] = v;
        size_t *scc_n = xcalloc(g.n_scc + 1, sizeof(size_t)), *scc_first = xcalloc(g.n_scc + 1, sizeof(size_t));
        size_t *indeg = xcalloc(g.n_scc + 1, sizeof(size_t));
        size_t **scc_members = xmalloc((g.n_scc + 1) * sizeof(size_t *));
        size_t *scc_size = xcalloc(g.n_scc + 1, sizeof(size_t));
        for (size_t v = 0; v < g.n; v++)
            scc_size[g.scc[v]]++;
        for (size_t s = 0; s < g.n_scc; s++)
            scc_members[s] = xmalloc((scc_size[s] + 1) * sizeof(size_t));
        bool *done = xcalloc(g.n + 1, sizeof(bool));
        size_t *ordered = xmalloc((g.n + 1) * sizeof(size_t));
        const AppupInstr **group = xmalloc((g.n + 1) * sizeof(const AppupInstr *));

        size_t v = 0; /* vertices are numbered in work order */
        for (size_t w = 0; w < c->n_work; w++) {
            if (!c->work[w].hl) {
                script_push(&after, c->work[w].low);
                c->work[w].low = (RelupInstr){0};
                continue;
            }
            size_t this_v = v++;
            size_t wc = g.wc[this_v];
            if (done[wc])
                continue;
            done[wc] = true;
            size_t n = order_component(&g, members + wc_start[wc], wc_start[wc + 1] - wc_start[wc], scc_first, indeg,
                                       scc_members, scc_n, ordered);
            for (size_t k = 0; k < n; k++)
                group[k] = c->work[g.work[ordered[k]]].hl;
            translate_dep_to_low(c, group, n, &before, &after, &app_of_module);
        }
        for (size_t s = 0; s < g.n_scc; s++)
            free(scc_members[s]);
        free(scc_members);
        free(scc_size);
        free(scc_n);
        free(scc_first);
        free(indeg);
        free(wc_n);
        free(wc_start);
        free(members);
        free(done);
        free(ordered);
        free(group);
    }
    merge_load_object_code(c, &before, out);
    script_push(out, (RelupInstr){.op = RELUP_POINT_OF_NO_RETURN});
    for (size_t k = 0; k < after.n; k++)
        script_push(out, after.v[k]);
    free(after.v);
    graph_free(&g);
    strmap_clear(&vertex_of);
    strmap_clear(&app_of_module);
    return ok ? 0 : -EINVAL;
}

static int compute_direction(bool up, const ReleaseDef *from, const ReleaseDef *to, const RelupOptions *opts,
                             RelupScript *out, Diag *diag)
{
    size_t before = diag_n_errors(diag);
    char *what = xasprintf("relup %s -> %s (%s)", from->vsn, to->vsn, up ? "up" : "down");
    Ctx c = {.up = up, .from = from, .to = to, .what = what, .opts = opts, .diag = diag};
    collect_scripts(&c);
    if (diag_n_errors(diag) == before)
        translate(&c, out);
    for (size_t w = 0; w < c.n_work; w++)
        if (!c.work[w].hl)
            relup_instr_clear(&c.work[w].low);
    free(c.work);
    for (size_t s = 0; s < c.n_synth; s++) {
        appup_instr_clear(c.synth[s]);
        free(c.synth[s]);
    }
    free(c.synth);
    free(what);
    return diag_n_errors(diag) > before ? -EINVAL : 0;
}

/* The up direction, computed on a thread of its own (RelupOptions.parallel). */
typedef struct UpJob {
    const ReleaseDef *from, *to;
    const RelupOptions *opts;
    RelupScript *out;
    Diag diag; /* its messages, moved after the thread into the caller's */
    int r;
} UpJob;

static void *up_job(void *p)
{
    UpJob *j = p;
    j->r = compute_direction(true, j->from, j->to, j->opts, j->out, &j->diag);
    return NULL;
}

/* Moves from's messages to the end of into's (into may be NULL). */
static void diag_move(Diag *into, Diag *from)
{
    for (size_t i = 0; into && i < from->errors.n; i++)
        strvec_push_take(&into->errors, TAKE_PTR(from->errors.v[i]));
    for (size_t i = 0; into && i < from->warnings.n; i++)
        strvec_push_take(&into->warnings, TAKE_PTR(from->warnings.v[i]));
    diag_clear(from);
}

int relup_compute(const ReleaseDef *from, const ReleaseDef *to, const RelupOptions *opts, Relup **ret, Diag *diag)
{
    Relup *r = xcalloc(1, sizeof(*r));
    r->from = xstrdup(from->vsn);
    r->to = xstrdup(to->vsn);
    /* Up: from -> to with the new versions' "up" entries; down: to -> from
     * with the same (new) versions' "down" entries, as OTP. The two only
     * read the releases, so they can run at once; the messages come out in
     * the same order either way, up's first. */
    UpJob up = {.from = from, .to = to, .opts = opts, .out = &r->up};
    pthread_t t;
    bool threaded = opts && opts->parallel && pthread_create(&t, NULL, up_job, &up) == 0;
    if (!threaded)
        up_job(&up);
    Diag down = {0};
    int b = compute_direction(false, to, from, opts, &r->down, &down);
    if (threaded && pthread_join(t, NULL) != 0)
        abort(); /* cannot fail for a joinable thread of ours */
    int a = up.r;
    diag_move(diag, &up.diag);
    diag_move(diag, &down);
    if (a < 0 || b < 0) {
        relup_free(r);
        return -EINVAL;
    }
    *ret = r;
    return 0;
}

/* ---- systools_rc:check_script ----------------------------------------- */

/* The modules named by the instructions of kind op in s[0, end) (keys
 * borrowed), in a map reserved to their number (a stored relup of 1,000
 * applications names 20,000 modules in each kind). */
static StrMap modules_of(const RelupScript *s, RelupOp op, size_t end)
{
    StrMap set = {0};
    size_t n = 0;
    for (size_t i = 0; i < end; i++)
        if (s->v[i].op == op)
            n += s->v[i].n_mods;
    strmap_reserve(&set, n);
    for (size_t i = 0; i < end; i++)
        if (s->v[i].op == op)
            for (size_t k = 0; k < s->v[i].n_mods; k++)
                strmap_put(&set, s->v[i].mods[k].module, i);
    return set;
}

/* Every module of an instruction of kind a appears in in_b (the modules of
 * the instructions of kind b in s), else an error "<label>: m". Linear:
 * stored relups of large releases hold tens of thousands of instructions. */
static void check_paired(const RelupScript *s, RelupOp a, const StrMap *in_b, const char *what, const char *label,
                         Diag *diag)
{
    for (size_t i = 0; i < s->n; i++) {
        if (s->v[i].op != a)
            continue;
        for (size_t k = 0; k < s->v[i].n_mods; k++)
            if (!strmap_get(in_b, s->v[i].mods[k].module, NULL))
                diag_error(diag, "%s: instruction %zu: %s but not %s: '%s'", what, i + 1, relup_op_name(a), label,
                           s->v[i].mods[k].module);
    }
}

int relup_check_script(const RelupScript *s, const char *what, Diag *diag)
{
    size_t before = diag_n_errors(diag);
    size_t ponr = s->n;
    for (size_t i = 0; i < s->n; i++) {
        if (s->v[i].op != RELUP_POINT_OF_NO_RETURN)
            continue;
        if (ponr != s->n)
            diag_error(diag, "%s: instruction %zu: more than one point_of_no_return", what, i + 1);
        else
            ponr = i;
    }
    if (ponr == s->n)
        diag_error(diag, "%s: no point_of_no_return", what);
    /* Only load_object_code comes before the point of no return, so the
     * modules loaded before any load after it are those of all of them.
     * A load before it is already wrong; as in OTP, only what comes before
     * that load counts: the modules of the load_object_code seen so far. */
    StrMap loaded = modules_of(s, RELUP_LOAD_OBJECT_CODE, ponr), so_far = {0};
    bool early_load = false; /* so_far is needed only for a load before the point of no return */
    for (size_t i = 0; i < ponr && !early_load; i++)
        early_load = s->v[i].op == RELUP_LOAD;
    for (size_t i = 0; i < s->n; i++) {
        const RelupInstr *in = &s->v[i];
        if (i < ponr && in->op != RELUP_LOAD_OBJECT_CODE)
            diag_error(diag, "%s: instruction %zu: %s before point_of_no_return", what, i + 1, relup_op_name(in->op));
        if (early_load && i < ponr && in->op == RELUP_LOAD_OBJECT_CODE)
            for (size_t k = 0; k < in->n_mods; k++)
                strmap_put(&so_far, in->mods[k].module, i);
        if (in->op != RELUP_LOAD)
            continue;
        if (!strmap_get(i < ponr ? &so_far : &loaded, in->module, NULL))
            diag_error(diag, "%s: instruction %zu: no load_object_code for module '%s' before it", what, i + 1,
                       in->module);
    }
    strmap_clear(&loaded);
    strmap_clear(&so_far);
    /* Each kind's modules gathered once (suspend's serve two checks). */
    StrMap suspended = modules_of(s, RELUP_SUSPEND, s->n), resumed = modules_of(s, RELUP_RESUME, s->n);
    check_paired(s, RELUP_SUSPEND, &resumed, what, "resumed", diag);
    check_paired(s, RELUP_RESUME, &suspended, what, "suspended", diag);
    check_paired(s, RELUP_CODE_CHANGE, &suspended, what, "suspended", diag);
    strmap_clear(&suspended);
    strmap_clear(&resumed);
    StrMap stopped = modules_of(s, RELUP_STOP, s->n), started = modules_of(s, RELUP_START, s->n);
    check_paired(s, RELUP_START, &stopped, what, "stopped", diag);
    check_paired(s, RELUP_STOP, &started, what, "started", diag);
    strmap_clear(&stopped);
    strmap_clear(&started);
    return diag_n_errors(diag) > before ? -EINVAL : 0;
}
