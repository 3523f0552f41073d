/*
 * crc32c - see crc32c.h
 */
#include "crc32c.h"

#include <string.h>

#define CRC32C_POLY 0x82f63b78u     /* reflected Castagnoli polynomial */

static uint32_t crc32c_table[8][256];
static int crc32c_have_sse42;


/* crc32c_init - build the slicing tables and pick the implementation */
__attribute__((constructor)) static void
crc32c_init(void)
{
    uint32_t i, j, c;

    for (i = 0; i < 256; i++) {
        c = i;
        for (j = 0; j < 8; j++)
            c = (c >> 1) ^ (CRC32C_POLY & (0u - (c & 1)));
        crc32c_table[0][i] = c;
    }
    for (i = 0; i < 256; i++) {
        c = crc32c_table[0][i];
        for (j = 1; j < 8; j++) {
            c = crc32c_table[0][c & 0xff] ^ (c >> 8);
            crc32c_table[j][i] = c;
        }
    }
#if defined(__x86_64__)
    __builtin_cpu_init();
    crc32c_have_sse42 = __builtin_cpu_supports("sse4.2");
#endif
}


/* crc32c_sw - slicing-by-8: eight table lookups per 8 input bytes */
uint32_t
crc32c_sw(uint32_t crc, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    uint64_t w;

    crc = ~crc;
    while (len > 0 && ((uintptr_t)p & 7) != 0) {
        crc = crc32c_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        len--;
    }
    while (len >= 8) {
        /* Little-endian load: the reflected CRC eats the low byte first. */
        memcpy(&w, p, 8);
        w ^= crc;
        crc = crc32c_table[7][w & 0xff] ^
              crc32c_table[6][(w >> 8) & 0xff] ^
              crc32c_table[5][(w >> 16) & 0xff] ^
              crc32c_table[4][(w >> 24) & 0xff] ^
              crc32c_table[3][(w >> 32) & 0xff] ^
              crc32c_table[2][(w >> 40) & 0xff] ^
              crc32c_table[1][(w >> 48) & 0xff] ^
              crc32c_table[0][w >> 56];
        p += 8;
        len -= 8;
    }
    while (len > 0) {
        crc = crc32c_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        len--;
    }
    return ~crc;
}


#if defined(__x86_64__)
/* crc32c_hw - the SSE4.2 crc32 instruction, 8 bytes per step */
__attribute__((target("sse4.2"))) static uint32_t
crc32c_hw(uint32_t crc, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    uint64_t c = (uint32_t)~crc;
    uint64_t w;

    while (len > 0 && ((uintptr_t)p & 7) != 0) {
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
        len--;
    }
    while (len >= 8) {
        memcpy(&w, p, 8);
        c = __builtin_ia32_crc32di(c, w);
        p += 8;
        len -= 8;
    }
    while (len > 0) {
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
        len--;
    }
    return ~(uint32_t)c;
}
#endif


/* crc32c - CRC-32C of buf continuing from crc (0 to start) */
uint32_t
crc32c(uint32_t crc, const void *buf, size_t len)
{
#if defined(__x86_64__)
    if (crc32c_have_sse42)
        return crc32c_hw(crc, buf, len);
#endif
    return crc32c_sw(crc, buf, len);
}
