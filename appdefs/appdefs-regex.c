/* Appup version patterns: a small subset of POSIX ERE (docs/formats.md),
 * compiled to a Thompson automaton and matched by simulating it (Pike's VM
 * without captures). Matching the whole of s costs at most
 * states x (strlen(s) + 1) steps and memory in proportion to the states,
 * whatever the pattern: no backtracking, no DFA that could grow. The
 * bounds (appdefs.h) keep the states at APPDEFS_REGEX_MAX_STATES; counted
 * repetition is the one construct that multiplies them, and its cost is
 * known before anything is built.
 *
 * Whether the whole of a string matches does not depend on how an engine
 * picks among matches, so this answers as glibc's regexec does on ^(re)$
 * for every pattern the subset accepts. The subset leaves out what OTP's
 * PCRE and POSIX read differently (\d, \w, backreferences, lazy and
 * possessive quantifiers, backslashes in brackets), so that a pattern
 * means one thing in reld and in an .appup. */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "appdefs.h"

typedef enum RxOp { RX_CHAR, RX_SET, RX_ANY, RX_SPLIT, RX_JMP, RX_MATCH } RxOp;

typedef struct RxInst {
    uint8_t op;
    uint8_t c;     /* RX_CHAR */
    uint16_t set;  /* RX_SET: index into sets */
    uint16_t x, y; /* RX_JMP: x; RX_SPLIT: x, then y */
} RxInst;

struct AppdefsRegex {
    RxInst *prog;
    size_t n;
    uint8_t (*sets)[32]; /* 256-bit byte sets */
    size_t n_sets;
};

/* ---- parsing -------------------------------------------------------------- */

typedef enum NodeType { N_EMPTY, N_CHAR, N_SET, N_ANY, N_CAT, N_ALT, N_REP } NodeType;

enum { REP_INF = -1 };

typedef struct Node {
    NodeType t;
    int a, b;     /* children: N_CAT, N_ALT (a, b); N_REP (a) */
    int min, max; /* N_REP; max may be REP_INF */
    uint8_t c;    /* N_CHAR */
    int set;      /* N_SET */
} Node;

typedef struct Parser {
    const char *re;
    size_t pos, len;
    Node *nodes;
    size_t n_nodes, cap_nodes;
    uint8_t (*sets)[32];
    size_t n_sets, cap_sets;
    int depth;
    char *why; /* the first problem */
} Parser;

static int fail(Parser *p, const char *fmt, ...) UTIL_PRINTF(2, 3);
static int fail(Parser *p, const char *fmt, ...)
{
    if (!p->why) {
        va_list ap;
        va_start(ap, fmt);
        char *msg = xvasprintf(fmt, ap);
        va_end(ap);
        p->why = xasprintf("%s (at character %zu)", msg, p->pos + 1);
        free(msg);
    }
    return -1;
}

static int node(Parser *p, Node n)
{
    GROW(p->nodes, p->cap_nodes, p->n_nodes + 1);
    p->nodes[p->n_nodes] = n;
    return (int)p->n_nodes++;
}

static bool is_quantifier(char c)
{
    return c == '*' || c == '+' || c == '?' || c == '{';
}

/* What a backslash may make literal: the special characters of an ERE,
 * and three that versions hold. Before anything else glibc and PCRE
 * disagree (\d, \w, \<, \`, backreferences \1). */
#define ESCAPABLE ".[](){}*+?|^$\\-~/"

static void set_add(uint8_t *set, unsigned char c)
{
    set[c / 8] |= (uint8_t)(1u << (c % 8));
}

static bool set_has(const uint8_t *set, unsigned char c)
{
    return set[c / 8] & (1u << (c % 8));
}

/* [:name:] in the C locale. */
static bool add_class(uint8_t *set, const char *name, size_t n)
{
    static const struct {
        const char *name, *ranges; /* pairs of first and last byte */
    } classes[] = {
        {"alpha", "azAZ"},    {"digit", "09"},     {"alnum", "azAZ09"},   {"upper", "AZ"},     {"lower", "az"},
        {"xdigit", "09afAF"}, {"space", "\t\r  "}, {"punct", "!/:@[`{~"}, {"blank", "\t\t  "},
    };
    for (size_t i = 0; i < sizeof(classes) / sizeof(*classes); i++) {
        if (strlen(classes[i].name) != n || strncmp(classes[i].name, name, n) != 0)
            continue;
        for (const char *r = classes[i].ranges; *r; r += 2)
            for (unsigned c = (unsigned char)r[0]; c <= (unsigned char)r[1]; c++)
                set_add(set, (unsigned char)c);
        return true;
    }
    return false;
}

/* After '[': a bracket expression up to its ']'. */
static int parse_bracket(Parser *p)
{
    uint8_t set[32] = {0};
    const char *re = p->re;
    size_t start = p->pos - 1;
    bool negate = p->pos < p->len && re[p->pos] == '^';
    if (negate)
        p->pos++;
    for (bool first = true;; first = false) {
        if (p->pos >= p->len) {
            p->pos = start;
            return fail(p, "'[' without its ']'");
        }
        unsigned char c = (unsigned char)re[p->pos];
        if (c == ']' && !first)
            break;
        if (c == '\\')
            return fail(p, "backslash inside [...] (POSIX reads it as itself, OTP's PCRE as an escape)");
        if (c == '[' && p->pos + 1 < p->len && (re[p->pos + 1] == '=' || re[p->pos + 1] == '.'))
            return fail(p, "'[%c' (equivalence classes and collating elements) is not supported", re[p->pos + 1]);
        if (c == '[' && p->pos + 1 < p->len && re[p->pos + 1] == ':') {
            const char *end = strstr(re + p->pos + 2, ":]");
            if (!end)
                return fail(p, "'[:' without its ':]'");
            if (!add_class(set, re + p->pos + 2, (size_t)(end - (re + p->pos + 2))))
                return fail(p, "unknown character class '[:%.*s:]'", (int)(end - (re + p->pos + 2)), re + p->pos + 2);
            p->pos = (size_t)(end - re) + 2;
            if (p->pos + 1 < p->len && re[p->pos] == '-' && re[p->pos + 1] != ']')
                return fail(p, "a character class cannot start a range");
            continue;
        }
        if (c == '-' && !first && !(p->pos + 1 < p->len && re[p->pos + 1] == ']'))
            return fail(p, "'-' inside [...] only first, last or between the ends of a range");
        p->pos++;
        if (p->pos + 1 < p->len && re[p->pos] == '-' && re[p->pos + 1] != ']') {
            unsigned char last = (unsigned char)re[p->pos + 1];
            if (last == '\\' || (last == '[' && p->pos + 2 < p->len && strchr(":=.", re[p->pos + 2])))
                return fail(p, "bad end of range '%c-'", c);
            if (last < c)
                return fail(p, "range '%c-%c' runs backwards", c, last);
            for (unsigned x = c; x <= last; x++)
                set_add(set, (unsigned char)x);
            p->pos += 2;
            continue;
        }
        set_add(set, c);
    }
    p->pos++; /* ']' */
    if (negate)
        for (size_t i = 0; i < sizeof(set); i++)
            set[i] = (uint8_t)~set[i];
    GROW(p->sets, p->cap_sets, p->n_sets + 1);
    memcpy(p->sets[p->n_sets], set, sizeof(set));
    return node(p, (Node){.t = N_SET, .set = (int)p->n_sets++});
}

static int parse_alt(Parser *p);

static int parse_atom(Parser *p)
{
    const char *re = p->re;
    unsigned char c = (unsigned char)re[p->pos];
    if (is_quantifier((char)c))
        return fail(p, "'%c' has nothing to repeat", c);
    p->pos++;
    switch (c) {
    case '(': {
        if (++p->depth > APPDEFS_REGEX_MAX_DEPTH)
            return fail(p, "groups nested more than %d deep", APPDEFS_REGEX_MAX_DEPTH);
        int a = parse_alt(p);
        if (a < 0)
            return -1;
        if (p->pos >= p->len || re[p->pos] != ')')
            return fail(p, "'(' without its ')'");
        p->pos++;
        p->depth--;
        return a;
    }
    case ')':
        p->pos--;
        return fail(p, "')' without its '('");
    case '[':
        return parse_bracket(p);
    case '.':
        return node(p, (Node){.t = N_ANY});
    case '^':
    case '$':
        p->pos--;
        return fail(p, "'^' only at the start and '$' only at the end (the pattern is anchored anyway)");
    case '\\':
        if (p->pos >= p->len) {
            p->pos--;
            return fail(p, "a backslash at the end");
        }
        c = (unsigned char)re[p->pos];
        if (!c || !strchr(ESCAPABLE, c))
            return fail(p,
                        "'\\%c' is not supported: a backslash goes only before one of %s (glibc and OTP's PCRE read "
                        "the others differently; write [0-9] for \\d)",
                        c, ESCAPABLE);
        p->pos++;
        return node(p, (Node){.t = N_CHAR, .c = c});
    default:
        return node(p, (Node){.t = N_CHAR, .c = c});
    }
}

/* A number of a bound {m,n}. */
static int parse_bound(Parser *p)
{
    int v = -1;
    while (p->pos < p->len && p->re[p->pos] >= '0' && p->re[p->pos] <= '9') {
        v = (v < 0 ? 0 : v) * 10 + (p->re[p->pos++] - '0');
        if (v > APPDEFS_REGEX_MAX_REPEAT)
            return -2;
    }
    return v;
}

static int parse_piece(Parser *p)
{
    int a = parse_atom(p);
    if (a < 0 || p->pos >= p->len || !is_quantifier(p->re[p->pos]))
        return a;
    size_t at = p->pos;
    int min = 0, max = REP_INF;
    char q = p->re[p->pos++];
    if (q == '+')
        min = 1;
    else if (q == '?')
        max = 1;
    else if (q == '{') {
        min = parse_bound(p);
        max = min;
        if (min >= 0 && p->pos < p->len && p->re[p->pos] == ',') {
            p->pos++;
            max = parse_bound(p);
            if (max == -1)
                max = REP_INF;
        }
        if (min == -2 || max == -2) {
            p->pos = at;
            return fail(p, "a bound of {m,n} over %d", APPDEFS_REGEX_MAX_REPEAT);
        }
        if (min < 0 || p->pos >= p->len || p->re[p->pos] != '}') {
            p->pos = at;
            return fail(p, "'{' that is no bound {m}, {m,} or {m,n} (write \\{ for the character)");
        }
        p->pos++;
        if (max != REP_INF && max < min) {
            p->pos = at;
            return fail(p, "bound {%d,%d} runs backwards", min, max);
        }
    }
    if (p->pos < p->len && is_quantifier(p->re[p->pos]))
        return fail(p,
                    "'%c' right after '%.*s': consecutive quantifiers (in OTP's PCRE '?' and '+' there "
                    "make the first lazy or possessive)",
                    p->re[p->pos], (int)(p->pos - at), p->re + at);
    return node(p, (Node){.t = N_REP, .a = a, .min = min, .max = max});
}

static int parse_cat(Parser *p)
{
    int cat = -1;
    while (p->pos < p->len && p->re[p->pos] != '|' && p->re[p->pos] != ')') {
        int piece = parse_piece(p);
        if (piece < 0)
            return -1;
        cat = cat < 0 ? piece : node(p, (Node){.t = N_CAT, .a = cat, .b = piece});
    }
    return cat < 0 ? node(p, (Node){.t = N_EMPTY}) : cat;
}

static int parse_alt(Parser *p)
{
    int alt = parse_cat(p);
    while (alt >= 0 && p->pos < p->len && p->re[p->pos] == '|') {
        p->pos++;
        int b = parse_cat(p);
        alt = b < 0 ? -1 : node(p, (Node){.t = N_ALT, .a = alt, .b = b});
    }
    return alt;
}

/* ---- compiling ------------------------------------------------------------ */

/* Instructions n compiles to, or more than APPDEFS_REGEX_MAX_STATES (then
 * exactly one more): known before anything is built. */
static size_t prog_size(const Parser *p, int i)
{
    const size_t over = APPDEFS_REGEX_MAX_STATES + 1;
    const Node *n = &p->nodes[i];
    size_t s, r;
    switch (n->t) {
    case N_EMPTY:
        return 0;
    case N_CHAR:
    case N_SET:
    case N_ANY:
        return 1;
    case N_CAT:
        r = prog_size(p, n->a) + prog_size(p, n->b);
        break;
    case N_ALT:
        r = prog_size(p, n->a) + prog_size(p, n->b) + 2;
        break;
    case N_REP:
        s = prog_size(p, n->a);
        if (s >= over)
            return over;
        if (n->max == REP_INF)
            r = n->min ? (size_t)n->min * s + 1 : s + 2;
        else
            r = (size_t)n->min * s + (size_t)(n->max - n->min) * (s + 1);
        break;
    default:
        return over;
    }
    return r < over ? r : over;
}

static size_t emit(const Parser *p, int i, RxInst *prog, size_t pc)
{
    const Node *n = &p->nodes[i];
    switch (n->t) {
    case N_EMPTY:
        return pc;
    case N_CHAR:
        prog[pc] = (RxInst){.op = RX_CHAR, .c = n->c};
        return pc + 1;
    case N_SET:
        prog[pc] = (RxInst){.op = RX_SET, .set = (uint16_t)n->set};
        return pc + 1;
    case N_ANY:
        prog[pc] = (RxInst){.op = RX_ANY};
        return pc + 1;
    case N_CAT:
        return emit(p, n->b, prog, emit(p, n->a, prog, pc));
    case N_ALT: {
        /* split L1 L2; L1: a; jmp end; L2: b; end: */
        size_t split = pc, l2, jmp = emit(p, n->a, prog, pc + 1);
        l2 = jmp + 1;
        size_t end = emit(p, n->b, prog, l2);
        prog[split] = (RxInst){.op = RX_SPLIT, .x = (uint16_t)(split + 1), .y = (uint16_t)l2};
        prog[jmp] = (RxInst){.op = RX_JMP, .x = (uint16_t)end};
        return end;
    }
    case N_REP: {
        if (n->max == REP_INF && n->min == 0) {
            /* L: split L1 end; L1: a; jmp L; end: */
            size_t jmp = emit(p, n->a, prog, pc + 1);
            prog[pc] = (RxInst){.op = RX_SPLIT, .x = (uint16_t)(pc + 1), .y = (uint16_t)(jmp + 1)};
            prog[jmp] = (RxInst){.op = RX_JMP, .x = (uint16_t)pc};
            return jmp + 1;
        }
        for (int k = 0; k + 1 < n->min; k++)
            pc = emit(p, n->a, prog, pc);
        if (n->max == REP_INF) {
            /* the last of min copies: L: a; split L end; end: */
            size_t l = pc, split = emit(p, n->a, prog, pc);
            prog[split] = (RxInst){.op = RX_SPLIT, .x = (uint16_t)l, .y = (uint16_t)(split + 1)};
            return split + 1;
        }
        if (n->min > 0)
            pc = emit(p, n->a, prog, pc);
        for (int k = n->min; k < n->max; k++) {
            /* split L1 end; L1: a; end: */
            size_t end = emit(p, n->a, prog, pc + 1);
            prog[pc] = (RxInst){.op = RX_SPLIT, .x = (uint16_t)(pc + 1), .y = (uint16_t)end};
            pc = end;
        }
        return pc;
    }
    }
    return pc;
}

int appdefs_regex_compile(const char *re, AppdefsRegex **ret, char **why)
{
    size_t len = strlen(re);
    if (len > APPDEFS_REGEX_MAX_LEN) {
        if (why)
            *why = xasprintf("%zu bytes long; the limit is %d", len, APPDEFS_REGEX_MAX_LEN);
        return -EINVAL;
    }
    Parser p = {.re = re, .len = len};
    /* The whole string must match anyway: a leading ^ and a trailing $ say
     * nothing more, and are allowed there only. */
    if (p.len && re[0] == '^')
        p.pos = 1;
    if (p.len > p.pos && re[p.len - 1] == '$') {
        size_t bs = 0; /* an escaped \$ is the character */
        while (bs + 2 <= p.len && re[p.len - 2 - bs] == '\\')
            bs++;
        if (bs % 2 == 0)
            p.len--;
    }
    int root = parse_alt(&p);
    if (root >= 0 && p.pos < p.len)
        root = fail(&p, "')' without its '('");
    size_t n = root >= 0 ? prog_size(&p, root) + 1 : 0; /* + match */
    if (root >= 0 && n > APPDEFS_REGEX_MAX_STATES) {
        p.pos = 0;
        root = fail(&p, "more than %d states once {m,n} are expanded", APPDEFS_REGEX_MAX_STATES);
    }
    if (root < 0) {
        if (why) {
            *why = p.why;
            p.why = NULL;
        }
        free(p.why);
        free(p.nodes);
        free(p.sets);
        return -EINVAL;
    }
    AppdefsRegex *r = xcalloc(1, sizeof(*r));
    r->prog = xcalloc(n, sizeof(*r->prog));
    r->n = emit(&p, root, r->prog, 0) + 1;
    r->prog[r->n - 1] = (RxInst){.op = RX_MATCH};
    r->sets = p.sets;
    r->n_sets = p.n_sets;
    free(p.nodes);
    *ret = r;
    return 0;
}

/* ---- matching ------------------------------------------------------------- */

typedef struct Run {
    const AppdefsRegex *r;
    size_t *mark, gen; /* mark[pc] == gen: pc is in the list being built */
    uint16_t *stack;
} Run;

/* Adds pc and every state reachable from it without reading to list. */
static void add_state(Run *run, uint16_t *list, size_t *n, uint16_t pc)
{
    size_t sp = 0;
    run->stack[sp++] = pc;
    while (sp) {
        pc = run->stack[--sp];
        if (run->mark[pc] == run->gen)
            continue;
        run->mark[pc] = run->gen;
        const RxInst *in = &run->r->prog[pc];
        if (in->op == RX_JMP) {
            run->stack[sp++] = in->x;
        } else if (in->op == RX_SPLIT) {
            run->stack[sp++] = in->y;
            run->stack[sp++] = in->x;
        } else {
            list[(*n)++] = pc;
        }
    }
}

int appdefs_regex_match(const AppdefsRegex *r, const char *s)
{
    /* Each state enters a list once per character; a state pushes at most
     * two others, so the stack never holds more than 2n + 1. */
    Run run = {.r = r, .mark = xcalloc(r->n, sizeof(size_t)), .stack = xmalloc((2 * r->n + 1) * sizeof(uint16_t))};
    uint16_t *cur = xmalloc(r->n * sizeof(uint16_t)), *next = xmalloc(r->n * sizeof(uint16_t));
    size_t n_cur = 0, n_next;
    run.gen = 1;
    add_state(&run, cur, &n_cur, 0);
    for (; *s && n_cur; s++) {
        unsigned char c = (unsigned char)*s;
        run.gen++;
        n_next = 0;
        for (size_t k = 0; k < n_cur; k++) {
            const RxInst *in = &r->prog[cur[k]];
            if ((in->op == RX_CHAR && in->c == c) || (in->op == RX_SET && set_has(r->sets[in->set], c)) ||
                in->op == RX_ANY)
                add_state(&run, next, &n_next, (uint16_t)(cur[k] + 1));
        }
        uint16_t *t = cur;
        cur = next;
        next = t;
        n_cur = n_next;
    }
    bool matched = false;
    for (size_t k = 0; k < n_cur && !*s; k++)
        matched = matched || r->prog[cur[k]].op == RX_MATCH;
    free(run.mark);
    free(run.stack);
    free(cur);
    free(next);
    return matched;
}

size_t appdefs_regex_states(const AppdefsRegex *r)
{
    return r->n;
}

AppdefsRegex *appdefs_regex_free(AppdefsRegex *r)
{
    if (!r)
        return NULL;
    free(r->prog);
    free(r->sets);
    free(r);
    return NULL;
}

int appdefs_regex_full_match(const char *re, const char *s)
{
    AppdefsRegex *r;
    if (appdefs_regex_compile(re, &r, NULL) < 0)
        return -EINVAL;
    int m = appdefs_regex_match(r, s);
    appdefs_regex_free(r);
    return m;
}
