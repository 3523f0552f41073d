/*
 * ringsink_record - what the sink accepted: the record file and the set
 *                   of tokens that finds duplicates
 *
 * DESCRIPTION
 *   Each accepted message appends "token peer rcpts size" to the record
 *   file through stdio's buffer; the caller flushes it once a second and
 *   at exit. XXX: the flush is a blocking write in the loop: this is a
 *   test tool, and a second's worth of lines is small.
 *
 *   Tokens are kept in an open-addressing table (linear probing, at most
 *   half full) of FNV-1a hashes pointing into one string arena, so a
 *   duplicate is found by its text, not only by its hash. Both grow by
 *   doubling: amortised, never one allocation per message.
 * OWNERSHIP
 *   The table and the strings belong to the record until
 *   ringsink_record_fini(); the FILE belongs to the caller.
 * SEE ALSO
 *   ringsink.h
 */
#include <string.h>

#include "ringsink.h"
#include "util.h"

#define RECORD_TAB_MIN 4096


/* ringsink_token_hash - FNV-1a 64 */
uint64_t
ringsink_token_hash(const char *token, size_t len)
{
    uint64_t h = 14695981039346656037ull;
    size_t i;

    for (i = 0; i < len; i++) {
        h ^= (unsigned char)token[i];
        h *= 1099511628211ull;
    }
    return h;
}


/*
 * ringsink_token_share - where token falls in [0, 1) for the shares: the
 * FNV-1a hash through MurmurHash3's fmix64, top 53 bits. FNV-1a alone
 * keeps its top bits nearly equal for tokens that differ in their last
 * digits, which would give a run all or nothing.
 */
double
ringsink_token_share(const char *token, size_t len)
{
    uint64_t k = ringsink_token_hash(token, len);

    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ull;
    k ^= k >> 33;
    return (double)(k >> 11) * 0x1.0p-53;
}


/* ringsink_record_init - an empty record writing to fp (NULL: count only) */
void
ringsink_record_init(struct ringsink_record *r, FILE *fp)
{
    memset(r, 0, sizeof *r);
    r->fp = fp;
    r->tab_cap = RECORD_TAB_MIN;
    r->tab = xcalloc(r->tab_cap, sizeof *r->tab);
}


/* record_slot - the slot holding token, or the empty one it would take */
static struct ringsink_token_slot *
record_slot(struct ringsink_token_slot *tab, size_t cap, const char *strs,
            uint64_t h, const char *token, size_t len)
{
    size_t i = (size_t)h & (cap - 1);
    size_t n;

    /* The table is at most half full: an empty slot ends every probe. */
    for (n = 0; n < cap; n++) {
        struct ringsink_token_slot *s = &tab[i];

        if (s->hash == 0)
            return s;
        if (s->hash == h && s->len == len &&
            memcmp(strs + s->off, token, len) == 0) {
            return s;
        }
        i = (i + 1) & (cap - 1);
    }
    panic("token table full (%zu slots)", cap);
}


/* record_grow - double the table (rehash) */
static void
record_grow(struct ringsink_record *r)
{
    size_t cap = r->tab_cap * 2, i;
    struct ringsink_token_slot *tab = xcalloc(cap, sizeof *tab);

    for (i = 0; i < r->tab_cap; i++) {
        struct ringsink_token_slot *s = &r->tab[i];

        if (s->hash != 0) {
            *record_slot(tab, cap, r->strs, s->hash, r->strs + s->off,
                         s->len) = *s;
        }
    }
    free(r->tab);
    r->tab = tab;
    r->tab_cap = cap;
}


/* record_token - 1 when token is new (and now remembered), 0 if seen */
static int
record_token(struct ringsink_record *r, const char *token, size_t len)
{
    uint64_t h = ringsink_token_hash(token, len);
    struct ringsink_token_slot *s;

    if (h == 0)
        h = 1;
    s = record_slot(r->tab, r->tab_cap, r->strs, h, token, len);
    if (s->hash != 0) {
        r->duplicates++;
        if (r->dups_listed < RINGSINK_DUPS_LISTED) {
            memcpy(r->dups[r->dups_listed], token, len);
            r->dups[r->dups_listed][len] = '\0';
            r->dups_listed++;
        }
        return 0;
    }
    if (r->strs_len + len > r->strs_cap) {
        r->strs_cap = MAX(r->strs_cap * 2, r->strs_len + len + 65536);
        r->strs = xrealloc(r->strs, r->strs_cap);
    }
    memcpy(r->strs + r->strs_len, token, len);
    s->hash = h;
    s->off = r->strs_len;
    s->len = (uint32_t)len;
    r->strs_len += len;
    r->unique++;
    if (r->unique * 2 > r->tab_cap)
        record_grow(r);
    return 1;
}


/* ringsink_record_add - one accepted message; 0 when its token is a dup */
int
ringsink_record_add(struct ringsink_record *r, const char *token,
                    size_t len, const char *peer, unsigned rcpts,
                    uint64_t size)
{
    int fresh = 1;

    ASSERT(len <= RINGSINK_TOKEN_MAX);
    if (len == 0)
        r->untokened++;
    else
        fresh = record_token(r, token, len);
    if (r->fp != NULL) {
        fprintf(r->fp, "%.*s %s %u %llu\n", len ? (int)len : 1,
                len ? token : "-", peer, rcpts, (unsigned long long)size);
    }
    return fresh;
}


/* ringsink_record_fini - free the table and the strings */
void
ringsink_record_fini(struct ringsink_record *r)
{
    free(r->tab);
    free(r->strs);
    memset(r, 0, sizeof *r);
}
