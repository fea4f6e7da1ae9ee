-- Load the sample photos of Debian's darknet package from the server's disk.
INSERT INTO images (id, class, image)
SELECT id, class, pg_read_binary_file('/usr/share/darknet/data/' || file)
FROM (VALUES (1, 'dog', 'dog.jpg'), (2, 'bird', 'eagle.jpg'), (3, 'giraffe', 'giraffe.jpg'),
             (4, 'horse', 'horses.jpg'), (5, 'kite', 'kite.jpg'), (6, 'person', 'person.jpg'),
             (7, 'painting', 'scream.jpg')) AS f (id, class, file);
