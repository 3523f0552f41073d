/*
 * listener - see listener.c: multishot accept and admission limits
 */
#ifndef RINGMAIL_LISTENER_H
#define RINGMAIL_LISTENER_H

#include <sys/socket.h>

#include "conf.h"

struct shard_listen;

void listener_arm(struct shard_listen *l);
int listener_admit(const struct conf *c, const struct sockaddr *sa);
void listener_release(const struct sockaddr *sa);

#endif
