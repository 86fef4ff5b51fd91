/* kvstore: a small persistent key-value store on a block device, over UDP.
 *
 *     kvstore <disk device or file> <udp port>
 *
 * Opens the path with openat(AT_FDCWD, path, O_RDWR) (and only if that says
 * ENOENT, again with O_CREAT), loads every record, binds INADDR_ANY:port and
 * prints "kvstore ready: <n> keys". Then it answers one datagram with one
 * datagram (text; one trailing "\n" or "\r\n" of a request is ignored):
 *
 *     SET <key> <value>  ->  OK              (value: the rest, any bytes, may be empty)
 *     GET <key>          ->  VALUE <value>  |  NOTFOUND
 *     DEL <key>          ->  OK             |  NOTFOUND
 *     COUNT              ->  COUNT <n>
 *     QUIT               ->  BYE, prints "kvstore stopped: <n> keys", exits 0
 *     anything else      ->  ERR <reason>
 *
 * A key is 1..60 bytes of printable ASCII without spaces (0x21..0x7e); a
 * value is 0..440 bytes. Commands are upper case and separated by exactly one
 * space. The store holds at most 256 keys. The ERR reasons: "empty request",
 * "unknown command", "usage: SET key value" (and GET, DEL, COUNT, QUIT alike),
 * "key too long", "bad key", "value too long", "request too long" (over 1024
 * bytes), "full", "disk" (a failed pread64/pwrite64/fsync).
 * A SET or DEL is written with pwrite64 and fsync'ed before "OK" is sent, so
 * every acknowledged change survives a kill at any moment.
 *
 * Disk layout, 512-byte blocks (a disk image's logical sector), little-endian:
 *   block 0      header: "HWEMUKV1", u32 slots (record blocks in use), u32 512
 *   block 1 + i  record i: u32 state (1 live, 0 free), u16 key length,
 *                u16 value length, key[60], value[440], zero padding
 * An all-zero (or empty) header block is formatted as an empty store; any
 * other header without the magic is refused. A new key takes the first free
 * record; only when none is free does "slots" grow, and then the record is
 * fsync'ed before the header that makes it visible.
 *
 * Needs a network and a disk, so it is not one of the differential tests'
 * stdout samples: tests/guest/test_network_samples.py drives it over UDP. */
#include <stdio.h>
#include <string.h>

#define BLOCK       512
#define MAX_KEY     60
#define MAX_VALUE   440
#define MAX_KEYS    256             /* records; the store needs (1 + 256) * 512 bytes */
#define MAX_REQUEST 1024
#define STATE_FREE  0
#define STATE_LIVE  1

static const char MAGIC[8] = {'H', 'W', 'E', 'M', 'U', 'K', 'V', '1'};

struct header {
    char magic[8];
    uint32_t slots;
    uint32_t block_size;
    uint8_t pad[BLOCK - 16];
};

struct record {
    uint32_t state;
    uint16_t keylen;
    uint16_t vallen;
    char key[MAX_KEY];
    char value[MAX_VALUE];
    uint8_t pad[BLOCK - 8 - MAX_KEY - MAX_VALUE];
};

_Static_assert(sizeof(struct header) == BLOCK, "header is one block");
_Static_assert(sizeof(struct record) == BLOCK, "record is one block");

static int disk;
static uint32_t slots;                  /* records 0..slots-1 exist on disk */
static uint8_t live[MAX_KEYS];
static uint8_t keylen[MAX_KEYS];
static char keys[MAX_KEYS][MAX_KEY];
static unsigned nkeys;

static char req[MAX_REQUEST + 1];
static char reply[8 + MAX_VALUE];
static struct record rec;
static struct header hdr;

static int64_t record_offset(uint32_t i) { return (int64_t)(1 + i) * BLOCK; }

static int write_block(const void *block, int64_t off)
{
    return sys_pwrite64(disk, block, BLOCK, off) == BLOCK;
}

static int write_header(void)
{
    memset(&hdr, 0, sizeof hdr);
    memcpy(hdr.magic, MAGIC, sizeof MAGIC);
    hdr.slots = slots;
    hdr.block_size = BLOCK;
    return write_block(&hdr, 0);
}

static int all_zero(const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i])
            return 0;
    return 1;
}

/* Reads the header (formatting an empty or all-zero one) and every record.
 * Returns 0, or prints why the store cannot be used and returns -1. */
static int load(const char *path)
{
    long r = sys_pread64(disk, &hdr, BLOCK, 0);
    if (r < 0) {
        printf("kvstore: cannot read %s: %ld\n", path, r);
        return -1;
    }
    if (r < BLOCK)
        memset((char *)&hdr + r, 0, (size_t)(BLOCK - r));
    if (all_zero(&hdr, BLOCK)) {
        slots = 0;
        if (!write_header() || sys_fsync(disk) < 0) {
            printf("kvstore: cannot format %s\n", path);
            return -1;
        }
        return 0;
    }
    if (memcmp(hdr.magic, MAGIC, sizeof MAGIC) != 0) {
        printf("kvstore: %s is not a kvstore (bad magic)\n", path);
        return -1;
    }
    if (hdr.slots > MAX_KEYS || hdr.block_size != BLOCK) {
        printf("kvstore: %s has a bad header (%u slots, block size %u)\n",
               path, (unsigned)hdr.slots, (unsigned)hdr.block_size);
        return -1;
    }
    slots = hdr.slots;
    for (uint32_t i = 0; i < slots; i++) {
        r = sys_pread64(disk, &rec, BLOCK, record_offset(i));
        if (r != BLOCK) {
            printf("kvstore: cannot read record %u: %ld\n", (unsigned)i, r);
            return -1;
        }
        if (rec.state == STATE_FREE)
            continue;
        if (rec.state != STATE_LIVE || rec.keylen < 1 || rec.keylen > MAX_KEY ||
            rec.vallen > MAX_VALUE) {
            printf("kvstore: record %u is corrupt\n", (unsigned)i);
            return -1;
        }
        live[i] = 1;
        keylen[i] = (uint8_t)rec.keylen;
        memcpy(keys[i], rec.key, rec.keylen);
        nkeys++;
    }
    return 0;
}

static int find(const char *key, size_t len)
{
    for (uint32_t i = 0; i < slots; i++)
        if (live[i] && keylen[i] == len && memcmp(keys[i], key, len) == 0)
            return (int)i;
    return -1;
}

static const char *set(const char *key, size_t klen, const char *value, size_t vlen)
{
    int i = find(key, klen);
    int grows = 0;
    if (i < 0) {
        for (uint32_t j = 0; j < slots && i < 0; j++)
            if (!live[j])
                i = (int)j;
        if (i < 0) {
            if (slots == MAX_KEYS)
                return "ERR full";
            i = (int)slots;
            grows = 1;
        }
    }
    memset(&rec, 0, sizeof rec);
    rec.state = STATE_LIVE;
    rec.keylen = (uint16_t)klen;
    rec.vallen = (uint16_t)vlen;
    memcpy(rec.key, key, klen);
    memcpy(rec.value, value, vlen);
    if (!write_block(&rec, record_offset((uint32_t)i)) || sys_fsync(disk) < 0)
        return "ERR disk";
    if (grows) {
        slots++;
        if (!write_header() || sys_fsync(disk) < 0) {
            slots--;
            return "ERR disk";
        }
    }
    if (!live[i]) {
        live[i] = 1;
        keylen[i] = (uint8_t)klen;
        memcpy(keys[i], key, klen);
        nkeys++;
    }
    return "OK";
}

static const char *del(const char *key, size_t klen)
{
    int i = find(key, klen);
    if (i < 0)
        return "NOTFOUND";
    memset(&rec, 0, sizeof rec);
    if (!write_block(&rec, record_offset((uint32_t)i)) || sys_fsync(disk) < 0)
        return "ERR disk";
    live[i] = 0;
    nkeys--;
    return "OK";
}

/* GET: the reply is built in `reply`; returns its length. */
static size_t get(const char *key, size_t klen)
{
    int i = find(key, klen);
    if (i < 0) {
        strcpy(reply, "NOTFOUND");
        return 8;
    }
    long r = sys_pread64(disk, &rec, BLOCK, record_offset((uint32_t)i));
    if (r != BLOCK || rec.state != STATE_LIVE || rec.vallen > MAX_VALUE) {
        strcpy(reply, "ERR disk");
        return 8;
    }
    memcpy(reply, "VALUE ", 6);
    memcpy(reply + 6, rec.value, rec.vallen);
    return 6 + (size_t)rec.vallen;
}

/* "" if key[0..len) is a valid key, else the error reply. */
static const char *check_key(const char *key, size_t len)
{
    if (len > MAX_KEY)
        return "ERR key too long";
    for (size_t i = 0; i < len; i++)
        if (key[i] < 0x21 || key[i] > 0x7e)
            return "ERR bad key";
    return "";
}

static int is(const char *s, size_t n, const char *word)
{
    return strlen(word) == n && memcmp(s, word, n) == 0;
}

/* Handles one request; the reply goes to `reply`, its length is returned.
 * *quit is set by QUIT. */
static size_t handle(char *s, size_t n, int *quit)
{
    const char *out;
    if (n > 0 && s[n - 1] == '\n') {
        n--;
        if (n > 0 && s[n - 1] == '\r')
            n--;
    }
    size_t clen = 0;
    while (clen < n && s[clen] != ' ')
        clen++;
    /* arg: what follows "CMD " (alen 0 and has_arg 0 when there is no space) */
    int has_arg = clen < n;
    char *arg = s + clen + has_arg;
    size_t alen = has_arg ? n - clen - 1 : 0;
    size_t klen = 0;
    while (klen < alen && arg[klen] != ' ')
        klen++;

    if (n == 0) {
        out = "ERR empty request";
    } else if (is(s, clen, "SET")) {
        if (klen == 0 || klen == alen)
            out = "ERR usage: SET key value";
        else if (*(out = check_key(arg, klen)))
            ;
        else if (alen - klen - 1 > MAX_VALUE)
            out = "ERR value too long";
        else
            out = set(arg, klen, arg + klen + 1, alen - klen - 1);
    } else if (is(s, clen, "GET") || is(s, clen, "DEL")) {
        if (klen == 0 || klen != alen)
            out = s[0] == 'G' ? "ERR usage: GET key" : "ERR usage: DEL key";
        else if (*(out = check_key(arg, klen)))
            ;
        else if (s[0] == 'G')
            return get(arg, klen);
        else
            out = del(arg, klen);
    } else if (is(s, clen, "COUNT")) {
        if (has_arg)
            out = "ERR usage: COUNT";
        else
            return (size_t)snprintf(reply, sizeof reply, "COUNT %u", nkeys);
    } else if (is(s, clen, "QUIT")) {
        if (has_arg) {
            out = "ERR usage: QUIT";
        } else {
            *quit = 1;
            out = "BYE";
        }
    } else {
        out = "ERR unknown command";
    }
    size_t len = strlen(out);
    memcpy(reply, out, len);
    return len;
}

/* The reply to one datagram of n bytes (n > MAX_REQUEST: it did not fit,
 * truncated), written over the request in s (cap bytes, more than any
 * reply); UDP_LAST after QUIT. */
static long answer(char *s, size_t n, size_t cap)
{
    int quit = 0;
    size_t len;
    if (n > MAX_REQUEST) {
        strcpy(reply, "ERR request too long");
        len = strlen(reply);
    } else {
        len = handle(s, n, &quit);
    }
    if (len > cap)
        len = cap;
    memcpy(s, reply, len);
    return quit ? UDP_LAST(len) : (long)len;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        printf("usage: kvstore <disk device or file> <udp port>\n");
        return 2;
    }
    int port = port_arg("kvstore", argv[2]);
    if (port < 0)
        return 2;

    long fd = sys_openat(AT_FDCWD, argv[1], O_RDWR, 0);
    if (fd == -HWEMU_ENOENT)
        fd = sys_openat(AT_FDCWD, argv[1], O_RDWR | O_CREAT, 0644);
    if (fd < 0) {
        printf("kvstore: cannot open %s: %ld\n", argv[1], fd);
        return 1;
    }
    disk = (int)fd;
    if (load(argv[1]) < 0)
        return 1;

    long sock = udp_listen("kvstore", port);
    if (sock < 0)
        return 1;
    printf("kvstore ready: %u keys\n", nkeys);

    if (udp_serve((int)sock, req, sizeof req, answer, "kvstore") < 0)
        return 1;
    printf("kvstore stopped: %u keys\n", nkeys);
    sys_fsync(disk);
    sys_close(disk);
    sys_close((int)sock);
    return 0;
}
