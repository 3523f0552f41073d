/*
 * crc32c - CRC-32C (Castagnoli), the checksum of spool records
 *
 * SYNOPSIS
 *   uint32_t crc32c(uint32_t crc, const void *buf, size_t len);
 * DESCRIPTION
 *   Returns the CRC-32C of buf continuing from crc: start with 0, and feed
 *   the result back in to checksum data that arrives in pieces, so
 *   crc32c(crc32c(0, a, na), b, nb) == crc32c(0, ab, na + nb). The check
 *   value is crc32c(0, "123456789", 9) == 0xE3069283.
 *
 *   It uses the SSE4.2 crc32 instruction when the CPU has it (checked once
 *   at startup) and a table-driven slicing-by-8 loop otherwise; both give
 *   the same result.
 * OWNERSHIP
 *   buf is only read.
 * THREADS
 *   Safe from any thread: the tables are built before main() runs.
 * ERRORS
 *   None.
 */
#ifndef RINGMAIL_CRC32C_H
#define RINGMAIL_CRC32C_H

#include <stddef.h>
#include <stdint.h>

uint32_t crc32c(uint32_t crc, const void *buf, size_t len);

/* crc32c_sw - the portable path, exported so tests can compare both */
uint32_t crc32c_sw(uint32_t crc, const void *buf, size_t len);

#endif
