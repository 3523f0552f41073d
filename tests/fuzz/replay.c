/*
 * replay - run every file of a fuzz corpus directory through a target
 *
 * SYNOPSIS
 *   replay DIR...
 * DESCRIPTION
 *   The ordinary (gcc, sanitizer) build has no libFuzzer; this driver feeds
 *   the saved corpus to LLVMFuzzerTestOneInput so every input that ever
 *   found something stays a regression test. Exits 0 when all ran.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static int
replay_file(const char *path)
{
    FILE *fp = fopen(path, "rb");
    uint8_t *buf;
    long n;

    if (fp == NULL) {
        perror(path);
        return -1;
    }
    fseek(fp, 0, SEEK_END);
    n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    buf = malloc((size_t)n + 1);
    if (buf == NULL || fread(buf, 1, (size_t)n, fp) != (size_t)n) {
        fclose(fp);
        free(buf);
        return -1;
    }
    fclose(fp);
    LLVMFuzzerTestOneInput(buf, (size_t)n);
    free(buf);
    return 0;
}


int
main(int argc, char **argv)
{
    int i, count = 0, failed = 0;

    for (i = 1; i < argc; i++) {
        DIR *d = opendir(argv[i]);
        struct dirent *de;

        if (d == NULL) {
            perror(argv[i]);
            return 1;
        }
        while ((de = readdir(d)) != NULL) {
            char path[4096];

            if (de->d_name[0] == '.')
                continue;
            snprintf(path, sizeof path, "%s/%s", argv[i], de->d_name);
            if (replay_file(path) < 0)
                failed++;
            count++;
        }
        closedir(d);
    }
    printf("replayed %d inputs, %d unreadable\n", count, failed);
    return failed ? 1 : count == 0;
}
